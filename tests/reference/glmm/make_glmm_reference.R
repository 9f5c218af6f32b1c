# Reference fits for tests/test_glmm.py: lme4::glmer with tight settings, written to glmm_reference.json.
# Run from the repository root:  Rscript tests/reference/glmm/make_glmm_reference.R
# The simulated Poisson data (with exposure) are written beside it as poisson_exposure.csv (seed fixed).
suppressPackageStartupMessages(library(lme4))
out_dir <- "tests/reference/glmm"
data_dir <- Sys.getenv("BAYESHLM_DATA", "bayeshlm/datasets/data")

# Tight settings (see /work/shared/reference/hglm_facts.md): glmer's defaults stop ~1e-4 early.
tight <- glmerControl(optimizer = "bobyqa", tolPwrss = 1e-12,
                      optCtrl = list(rhoend = 1e-10, maxfun = 1e5))

cbpp <- read.csv(file.path(data_dir, "cbpp.csv"), colClasses = c(herd = "factor", period = "factor"))
contra <- read.csv(file.path(data_dir, "Contraception.csv"),
                   colClasses = c(woman = "factor", district = "factor", livch = "factor", urban = "factor",
                                  use = "factor"))
contra$livch <- factor(contra$livch, levels = c("0", "1", "2", "3+"))

set.seed(20261206)
n_groups <- 40
sizes <- sample(5:25, n_groups, replace = TRUE)
pois <- data.frame(g = rep(sprintf("g%02d", seq_len(n_groups)), sizes))
pois$x <- round(rnorm(nrow(pois)), 4)
pois$years <- round(runif(nrow(pois), 0.5, 3), 3)
u <- rnorm(n_groups, 0, 0.6)[as.integer(factor(pois$g))]
pois$y <- rpois(nrow(pois), pois$years * exp(0.3 + 0.5 * pois$x + u))
write.csv(pois, file.path(out_dir, "poisson_exposure.csv"), row.names = FALSE)
pois$g <- factor(pois$g)

# Crossed binary data: 30 subjects x 12 items, each pair observed twice (the dense PIRLS path).
crossed <- expand.grid(subject = sprintf("s%02d", 1:30), item = sprintf("i%02d", 1:12), rep = 1:2)
crossed$x <- round(rnorm(nrow(crossed)), 4)
eta <- -0.4 + 0.8 * crossed$x + rnorm(30, 0, 0.9)[as.integer(factor(crossed$subject))] +
  rnorm(12, 0, 0.5)[as.integer(factor(crossed$item))]
crossed$y <- rbinom(nrow(crossed), 1, plogis(eta))
crossed$rep <- NULL
write.csv(crossed, file.path(out_dir, "bernoulli_crossed.csv"), row.names = FALSE)

# Nested binary data: 25 schools, 4 classes each, 8 pupils per class; random slope of x across schools.
nested <- expand.grid(pupil = 1:8, class = 1:4, school = sprintf("sch%02d", 1:25))
nested$x <- round(rnorm(nrow(nested)), 4)
school_u <- MASS::mvrnorm(25, c(0, 0), matrix(c(0.5, 0.1, 0.1, 0.2), 2))
class_u <- rnorm(100, 0, 0.5)
s_index <- as.integer(factor(nested$school))
c_index <- (s_index - 1) * 4 + nested$class
eta <- 0.2 + 0.7 * nested$x + school_u[s_index, 1] + school_u[s_index, 2] * nested$x + class_u[c_index]
nested$y <- rbinom(nrow(nested), 1, plogis(eta))
nested$pupil <- NULL
write.csv(nested, file.path(out_dir, "bernoulli_nested.csv"), row.names = FALSE)
nested$class <- factor(nested$class)

# Marginal log-likelihood of a random-intercept binomial model by numerical integration, per group.
integrated_loglik <- function(fit, data, successes, trials, group) {
  eta_fixed <- drop(model.matrix(fit) %*% fixef(fit))
  sd_u <- sqrt(VarCorr(fit)[[1]][1, 1])
  total <- 0
  for (g in levels(data[[group]])) {
    rows <- data[[group]] == g
    f <- function(b) sapply(b, function(bb) exp(sum(dbinom(successes[rows], trials[rows],
                                                            plogis(eta_fixed[rows] + bb), log = TRUE))) *
                                             dnorm(bb, 0, sd_u))
    total <- total + log(integrate(f, -Inf, Inf, rel.tol = 1e-12, abs.tol = 0)$value)
  }
  total
}

summarise <- function(fit, default_call) {
  started <- proc.time()[["elapsed"]]
  eval(default_call)
  default_seconds <- proc.time()[["elapsed"]] - started
  list(loglik = as.numeric(logLik(fit)), beta = unname(fixef(fit)), names = names(fixef(fit)),
       se = unname(sqrt(diag(as.matrix(vcov(fit))))), theta = unname(getME(fit, "theta")),
       tau = lapply(VarCorr(fit), function(m) unname(as.matrix(m)[seq_len(nrow(m)), seq_len(ncol(m))])),
       ranef = unname(ranef(fit)[[1]][[1]]),
       ranef_sd = unname(sqrt(attr(ranef(fit, condVar = TRUE)[[1]], "postVar")[1, 1, ])),
       glmer_default_seconds = default_seconds)
}

fits <- list()
m <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial, control = tight)
fits$cbpp_laplace <- summarise(m, quote(glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp,
                                             binomial)))
m <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial(link = "probit"),
           control = tight)
fits$cbpp_probit <- summarise(m, quote(glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp,
                                            binomial(link = "probit"))))
m <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial, nAGQ = 25, control = tight)
fits$cbpp_agq25 <- summarise(m, quote(glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp,
                                           binomial, nAGQ = 25)))
fits$cbpp_agq25$glmer_loglik_scale <- fits$cbpp_agq25$loglik
fits$cbpp_agq25$loglik <- integrated_loglik(m, cbpp, cbpp$incidence, cbpp$size, "herd")

m <- glmer(use ~ age + I(age^2) + urban + livch + (1 | district), contra, binomial, control = tight)
fits$contraception_intercept <- summarise(m, quote(glmer(use ~ age + I(age^2) + urban + livch + (1 | district),
                                                        contra, binomial)))
m <- glmer(use ~ age + I(age^2) + urban + livch + (urban | district), contra, binomial, control = tight)
fits$contraception_urban <- summarise(m, quote(glmer(use ~ age + I(age^2) + urban + livch + (urban | district),
                                                    contra, binomial)))
m <- glmer(y ~ x + (1 | g) + offset(log(years)), pois, poisson, control = tight)
fits$poisson_exposure <- summarise(m, quote(glmer(y ~ x + (1 | g) + offset(log(years)), pois, poisson)))

m <- glmer(y ~ x + (1 | subject) + (1 | item), crossed, binomial, control = tight)
fits$bernoulli_crossed <- summarise(m, quote(glmer(y ~ x + (1 | subject) + (1 | item), crossed, binomial)))

m <- glmer(y ~ x + (1 + x | school) + (1 | school:class), nested, binomial, control = tight)
fits$bernoulli_nested <- summarise(m, quote(glmer(y ~ x + (1 + x | school) + (1 | school:class), nested,
                                                 binomial)))

# Negative binomial (NB2, variance mu + mu^2 / k) on glmmTMB's Salamanders data, and the probit cbpp model:
# glmmTMB's Laplace uses the observed information (lme4's the expected one; equal for canonical links).
suppressPackageStartupMessages(library(glmmTMB))
data(Salamanders, package = "glmmTMB")
salamanders <- data.frame(site = as.character(Salamanders$site), mined = as.character(Salamanders$mined),
                          cover = Salamanders$cover, count = Salamanders$count)
write.csv(salamanders, file.path(out_dir, "salamanders.csv"), row.names = FALSE)
salamanders$mined <- factor(salamanders$mined, levels = c("yes", "no"))
tmb_summary <- function(fit, seconds) {
  list(loglik = as.numeric(logLik(fit)), beta = unname(fixef(fit)$cond), names = names(fixef(fit)$cond),
       se = unname(sqrt(diag(vcov(fit)$cond))), sd = unname(attr(VarCorr(fit)$cond[[1]], "stddev")),
       shape = unname(sigma(fit)), glmmtmb_seconds = seconds)
}
started <- proc.time()[["elapsed"]]
m <- glmmTMB(count ~ cover + mined + (1 | site), salamanders, family = nbinom2)
fits$nbinom_glmmtmb <- tmb_summary(m, proc.time()[["elapsed"]] - started)
started <- proc.time()[["elapsed"]]
m <- glmmTMB(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, family = binomial(link = "probit"))
fits$cbpp_probit_glmmtmb <- tmb_summary(m, proc.time()[["elapsed"]] - started)
started <- proc.time()[["elapsed"]]
m <- glmer.nb(count ~ cover + mined + (1 | site), salamanders, control = tight)
fits$nbinom_glmer <- c(summarise(m, quote(NULL)), shape = getME(m, "glmer.nb.theta"),
                       glmer_nb_seconds = proc.time()[["elapsed"]] - started)

# A minimal JSON writer (numbers with 17 significant digits), so that no JSON package is needed.
to_json <- function(x) {
  if (is.list(x)) {
    if (is.null(names(x))) return(paste0("[", paste(sapply(x, to_json), collapse = ", "), "]"))
    return(paste0("{", paste(sprintf("\"%s\": %s", names(x), sapply(x, to_json)), collapse = ", "), "}"))
  }
  if (is.matrix(x)) return(to_json(lapply(seq_len(nrow(x)), function(i) x[i, ])))
  if (is.character(x)) return(paste0("[", paste(sprintf("\"%s\"", x), collapse = ", "), "]"))
  values <- formatC(x, digits = 17, format = "g")
  if (length(x) == 1) return(values)
  paste0("[", paste(values, collapse = ", "), "]")
}
writeLines(to_json(c(list(lme4_version = as.character(packageVersion("lme4")),
                          r_version = R.version.string), fits)),
           file.path(out_dir, "glmm_reference.json"))
