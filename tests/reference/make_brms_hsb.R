## make_brms_hsb.R -- brms's posterior of every HS&B school's intercept and cses slope, under bayeshlm's
## default priors, for tests/test_bayes_sampling.py (the Bayes-vs-EB question of issue 8).
##
## Run from the repository root:   Rscript tests/reference/make_brms_hsb.R      (about 4 minutes)
## Writes tests/reference/brms_hsb_schools.json. Needs r-cran-brms (Debian 12: brms 2.18, rstan 2.21).
##
## Model: mathach ~ meanses*cses + sector*cses + (cses | school) (R&B 2002, Table 4.5), with HS&B rebuilt
## from the bundled CSVs as bayeshlm.datasets.load("hsb") builds it (meanses from the school file, centred
## at the mean of the 160 school values; cses = ses minus the school's mean ses). Priors: bayeshlm's
## documented defaults (bayeshlm/bayes/priors.py), computed here from the data by the same rule:
##   slope of x_k ~ Normal(0, 2.5 s_y / sd(x_k)); intercept ~ Normal(mean(y), sqrt((2.5 s_y)^2 +
##   sum_k (2.5 s_y mean(x_k) / sd(x_k))^2)); sigma ~ HalfStudentT(3, s_y); tau_k ~ HalfStudentT(3, s_y /
##   sd(z_k)) (s_y for the intercept); correlation ~ LKJ(2).
## The intercept is an ordinary coefficient (0 + Intercept), so brms does not centre the predictors.
suppressPackageStartupMessages({ library(brms); library(rstan); library(jsonlite) })
rstan_options(boost_lib = "/usr/include")
data_dir <- "bayeshlm/datasets/data"
students <- read.csv(file.path(data_dir, "MathAchieve.csv"))
schools <- read.csv(file.path(data_dir, "MathAchSchool.csv"))
meanses <- setNames(schools$MEANSES - mean(schools$MEANSES), schools$School)
catholic <- setNames(as.integer(schools$Sector == "Catholic"), schools$School)
hsb <- data.frame(school = as.character(students$School), mathach = students$MathAch, ses = students$SES)
hsb$cses <- hsb$ses - ave(hsb$ses, hsb$school)
hsb$meanses <- unname(meanses[hsb$school])
hsb$sector <- unname(catholic[hsb$school])

s_y <- sd(hsb$mathach)
columns <- list(meanses = hsb$meanses, cses = hsb$cses, sector = hsb$sector,
                `meanses:cses` = hsb$meanses * hsb$cses, `cses:sector` = hsb$cses * hsb$sector)
slope_sd <- sapply(columns, function(x) 2.5 * s_y / sd(x))
intercept_sd <- sqrt((2.5 * s_y)^2 + sum((2.5 * s_y * sapply(columns, mean) / sapply(columns, sd))^2))
priors <- c(
  set_prior(sprintf("normal(%.10g, %.10g)", mean(hsb$mathach), intercept_sd), class = "b", coef = "Intercept"),
  do.call(c, lapply(names(slope_sd), function(k) set_prior(sprintf("normal(0, %.10g)", slope_sd[[k]]),
                                                           class = "b", coef = k))),
  set_prior(sprintf("student_t(3, 0, %.10g)", s_y), class = "sigma"),
  set_prior(sprintf("student_t(3, 0, %.10g)", s_y), class = "sd", group = "school", coef = "Intercept"),
  set_prior(sprintf("student_t(3, 0, %.10g)", s_y / sd(hsb$cses)), class = "sd", group = "school", coef = "cses"),
  set_prior("lkj(2)", class = "cor"))

fit <- brm(mathach ~ 0 + Intercept + meanses * cses + sector * cses + (cses | school), data = hsb,
           prior = priors, chains = 4, iter = 2000, warmup = 1000, cores = 2, seed = 20261204, refresh = 0)
## each school's level-2 coefficients, per draw: beta_0j = g00 + g01 meanses_j + g02 sector_j + u_0j and
## beta_1j = g10 + g11 meanses_j + g12 sector_j + u_1j (R&B 2002, eq. 4.23), as bayeshlm's group_effects()
g <- fixef(fit, summary = FALSE)          # draws x fixed effects
u <- ranef(fit, summary = FALSE)$school   # draws x schools x (Intercept, cses)
level2 <- unique(hsb[, c("school", "meanses", "sector")])
level2 <- level2[match(dimnames(u)[[2]], level2$school), ]
beta0 <- g[, "Intercept"] + outer(g[, "meanses"], level2$meanses) + outer(g[, "sector"], level2$sector) +
  u[, , "Intercept"]
beta1 <- g[, "cses"] + outer(g[, "meanses:cses"], level2$meanses) + outer(g[, "cses:sector"], level2$sector) +
  u[, , "cses"]
tau11 <- as_draws_df(fit)[["sd_school__cses"]]
np <- nuts_params(fit)
out <- list(
  `_meta` = list(R = R.version.string, brms = as.character(packageVersion("brms")),
                 rstan = as.character(packageVersion("rstan")), chains = 4, draws = 1000, warmup = 1000,
                 seed = 20261204, divergences = sum(np$Value[np$Parameter == "divergent__"]),
                 max_rhat = max(rhat(fit), na.rm = TRUE),
                 note = "per school: posterior mean and SD of beta_0j and beta_1j (the cses slope)"),
  school = level2$school,
  intercept_mean = colMeans(beta0), intercept_sd = apply(beta0, 2, sd),
  cses_mean = colMeans(beta1), cses_sd = apply(beta1, 2, sd),
  tau_cses_mean = mean(tau11), tau_cses_q05 = unname(quantile(tau11, 0.05)),
  tau_cses_q95 = unname(quantile(tau11, 0.95)))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), "tests/reference/brms_hsb_schools.json")
