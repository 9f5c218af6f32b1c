## make_brms_reference.R -- brms's posterior of two HGLMs under bayeshlm's default link-scale priors, for
## tests/test_bayes_glmm_reference.py (issue 24: "group posteriors agree with brms under the same priors").
##
## Run from the repository root:
##   Rscript tests/reference/bayes_glmm/make_brms_reference.R cbpp            (about 2 minutes)
##   Rscript tests/reference/bayes_glmm/make_brms_reference.R contraception   (about 5 minutes)
## Writes tests/reference/bayes_glmm/brms_<model>.csv (posterior summaries), priors_<model>.csv (the priors
## rebuilt here, which the test checks against bayeshlm's) and meta_<model>.csv (versions, sampler diagnostics).
## Needs r-cran-brms (Debian 12: brms 2.18, rstan 2.21).
##
## Priors: docs/hglm_bayes.md, computed here from the data by the same rule as
## bayeshlm.bayes.glmm.default_glmm_priors. sd() there is the population SD (numpy's std, divisor n), over
## the rows of the data as given (cbpp: 56 binomial rows, not 842 Bernoulli trials):
##   slope of x_k        ~ Normal(0, 2.5 / sd(x_k))
##   intercept           ~ Normal(logit(ybar), sqrt(2.5^2 + sum_k (2.5 mean(x_k) / sd(x_k))^2)),
##                         ybar = sum(successes) / sum(trials), clipped to [0.01, 0.99]
##   SD of coefficient z ~ HalfStudentT(3, 2.5 / sd(z)) (2.5 for the intercept)
##   correlations        ~ LKJ(2)
## The intercept is an ordinary coefficient (0 + Intercept), so brms does not centre the predictors and the
## prior is on the same intercept as bayeshlm's.
suppressPackageStartupMessages({ library(brms); library(rstan) })
rstan_options(boost_lib = "/usr/include")
args <- commandArgs(trailingOnly = TRUE)
which_model <- if (length(args)) args[1] else "cbpp"
data_dir <- "bayeshlm/datasets/data"
out_dir <- "tests/reference/bayes_glmm"
seed <- 20261207
chains <- 4; warmup <- 1000; draws <- 2500

pop_sd <- function(x) sqrt(mean((x - mean(x))^2))

if (which_model == "cbpp") {
  raw <- read.csv(file.path(data_dir, "cbpp.csv"))
  d <- data.frame(herd = as.character(raw$herd), y = raw$incidence, n = raw$size,
                  period2 = as.integer(raw$period == 2), period3 = as.integer(raw$period == 3),
                  period4 = as.integer(raw$period == 4))
  columns <- c(`period[T.2]` = "period2", `period[T.3]` = "period3", `period[T.4]` = "period4")
  ybar <- sum(d$y) / sum(d$n)
  group <- "herd"
  coefs <- c(`(Intercept)` = "Intercept")
  z_columns <- list()
  formula <- y | trials(n) ~ 0 + Intercept + period2 + period3 + period4 + (1 | herd)
  family <- binomial()
} else if (which_model == "contraception") {
  raw <- read.csv(file.path(data_dir, "Contraception.csv"))
  d <- data.frame(district = as.character(raw$district), y = as.integer(raw$use == "Y"), age = raw$age,
                  age2 = raw$age^2, urbanY = as.integer(raw$urban == "Y"), livch1 = as.integer(raw$livch == "1"),
                  livch2 = as.integer(raw$livch == "2"), livch3p = as.integer(raw$livch == "3+"))
  columns <- c(age = "age", `I(age ** 2)` = "age2", `urban[T.Y]` = "urbanY", `livch[T.1]` = "livch1",
               `livch[T.2]` = "livch2", `livch[T.3+]` = "livch3p")
  ybar <- mean(d$y)
  group <- "district"
  coefs <- c(`(Intercept)` = "Intercept", `urban[T.Y]` = "urbanY")
  z_columns <- list(urbanY = d$urbanY)
  formula <- y ~ 0 + Intercept + age + age2 + urbanY + livch1 + livch2 + livch3p + (1 + urbanY | district)
  family <- bernoulli()
} else stop("model: cbpp or contraception")

## --- the priors, by bayeshlm's rule ---------------------------------------------------------------------
x_mean <- sapply(columns, function(k) mean(d[[k]]))
x_sd <- sapply(columns, function(k) pop_sd(d[[k]]))
slope_sd <- 2.5 / x_sd
intercept_mu <- qlogis(min(max(ybar, 0.01), 0.99))
intercept_sd <- sqrt(2.5^2 + sum((slope_sd * x_mean)^2))
tau_sd <- c(Intercept = 2.5, vapply(z_columns, function(z) 2.5 / pop_sd(z), numeric(1)))
prior_rows <- rbind(
  data.frame(parameter = "(Intercept)", dist = "Normal", nu = NA, mu = intercept_mu, sigma = intercept_sd),
  data.frame(parameter = names(columns), dist = "Normal", nu = NA, mu = 0, sigma = unname(slope_sd)),
  data.frame(parameter = paste0("tau_", group, "[", names(coefs), "]"), dist = "HalfStudentT", nu = 3, mu = 0,
             sigma = unname(tau_sd[coefs])))
if (length(coefs) > 1)
  prior_rows <- rbind(prior_rows, data.frame(parameter = paste0("corr_", group), dist = "LKJ", nu = 2, mu = NA,
                                             sigma = NA))
write.csv(prior_rows, file.path(out_dir, sprintf("priors_%s.csv", which_model)), row.names = FALSE)

priors <- c(
  set_prior(sprintf("normal(%.12g, %.12g)", intercept_mu, intercept_sd), class = "b", coef = "Intercept"),
  do.call(c, lapply(names(columns), function(k)
    set_prior(sprintf("normal(0, %.12g)", slope_sd[[k]]), class = "b", coef = columns[[k]]))),
  do.call(c, lapply(unname(coefs), function(k)
    set_prior(sprintf("student_t(3, 0, %.12g)", tau_sd[[k]]), class = "sd", group = group, coef = k))))
if (length(coefs) > 1) priors <- c(priors, set_prior("lkj(2)", class = "cor"))
print(priors)

fit <- brm(formula, data = d, family = family, prior = priors, chains = chains, iter = warmup + draws,
           warmup = warmup, cores = 2, seed = seed, refresh = 0, control = list(adapt_delta = 0.95))

## --- posterior summaries, named as bayeshlm names them ---------------------------------------------------
post <- as_draws_df(fit)
summ <- function(parameter, x) data.frame(parameter = parameter, mean = mean(x), sd = sd(x),
                                         q05 = unname(quantile(x, 0.05)), q95 = unname(quantile(x, 0.95)),
                                         ess_bulk = posterior::ess_bulk(matrix(x, ncol = chains)))
rows <- list(summ("(Intercept)", post[["b_Intercept"]]))
for (k in names(columns)) rows[[length(rows) + 1]] <- summ(k, post[[paste0("b_", columns[[k]])]])
for (k in names(coefs))
  rows[[length(rows) + 1]] <- summ(sprintf("tau_%s[%s]", group, k), post[[sprintf("sd_%s__%s", group, coefs[[k]])]])
if (length(coefs) > 1)
  rows[[length(rows) + 1]] <- summ(sprintf("corr_%s", group),
                                   post[[sprintf("cor_%s__%s__%s", group, coefs[[1]], coefs[[2]])]])
u <- ranef(fit, summary = FALSE)[[group]]   # draws x groups x coefficients
for (j in dimnames(u)[[2]]) for (k in names(coefs))
  rows[[length(rows) + 1]] <- summ(sprintf("u_%s[%s, %s]", group, j, k), u[, j, coefs[[k]]])
table <- do.call(rbind, rows)
write.csv(table, file.path(out_dir, sprintf("brms_%s.csv", which_model)), row.names = FALSE)

np <- nuts_params(fit)
meta <- data.frame(
  key = c("R", "brms", "rstan", "chains", "warmup", "draws_per_chain", "seed", "adapt_delta", "divergences",
          "max_rhat", "min_ess_bulk", "sampling_seconds"),
  value = c(R.version.string, as.character(packageVersion("brms")), as.character(packageVersion("rstan")),
            chains, warmup, draws, seed, 0.95, sum(np$Value[np$Parameter == "divergent__"]),
            sprintf("%.4f", max(rhat(fit), na.rm = TRUE)), sprintf("%.0f", min(table$ess_bulk)),
            sprintf("%.1f", sum(rstan::get_elapsed_time(fit$fit)[, "sample"]))))
write.csv(meta, file.path(out_dir, sprintf("meta_%s.csv", which_model)), row.names = FALSE)
print(meta)
print(head(table, 12))
