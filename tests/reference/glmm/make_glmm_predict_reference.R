# Predictions, residuals and conditional modes of glmer fits for tests/test_glmm.py (result contract, #23),
# written to glmm_predict_reference.json. Run from the repository root:
#   Rscript tests/reference/glmm/make_glmm_predict_reference.R
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
out_dir <- "tests/reference/glmm"
data_dir <- Sys.getenv("BAYESHLM_DATA", "bayeshlm/datasets/data")
tight <- glmerControl(optimizer = "bobyqa", tolPwrss = 1e-12, optCtrl = list(rhoend = 1e-10, maxfun = 1e5))

cbpp <- read.csv(file.path(data_dir, "cbpp.csv"), colClasses = c(herd = "factor", period = "factor"))
contra <- read.csv(file.path(data_dir, "Contraception.csv"),
                   colClasses = c(woman = "factor", district = "factor", livch = "factor", urban = "factor",
                                  use = "factor"))
contra$livch <- factor(contra$livch, levels = c("0", "1", "2", "3+"))

out <- list(lme4_version = as.character(packageVersion("lme4")), r_version = R.version.string)

m <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial, control = tight)
# New rows: a known herd, and a herd the fit did not see (allow.new.levels: its effect is 0).
cbpp_new <- data.frame(herd = c("3", "3", "99"), period = factor(c("1", "4", "2"), levels = levels(cbpp$period)))
out$cbpp <- list(
  fitted = unname(fitted(m)),
  predict_link = unname(predict(m, type = "link")),
  residuals_deviance = unname(residuals(m, type = "deviance")),
  residuals_pearson = unname(residuals(m, type = "pearson")),
  newdata = cbpp_new,
  new_link = unname(predict(m, newdata = cbpp_new, type = "link", allow.new.levels = TRUE)),
  new_response = unname(predict(m, newdata = cbpp_new, type = "response", allow.new.levels = TRUE)),
  new_population = unname(predict(m, newdata = cbpp_new, type = "response", re.form = NA)))

m <- glmer(use ~ age + I(age^2) + urban + livch + (urban | district), contra, binomial, control = tight)
re <- ranef(m, condVar = TRUE)$district
post <- attr(re, "postVar")  # (2, 2, J)
contra_new <- data.frame(district = c("1", "25", "999"), age = c(-5.56, 10.44, 0), urban = c("Y", "N", "Y"),
                         livch = factor(c("0", "3+", "1"), levels = levels(contra$livch)))
out$contraception_urban <- list(
  levels = rownames(re),
  ranef_intercept = unname(re[[1]]), ranef_urban = unname(re[[2]]),
  sd_intercept = unname(sqrt(post[1, 1, ])), sd_urban = unname(sqrt(post[2, 2, ])),
  coef_intercept = unname(coef(m)$district[[1]]), coef_urban = unname(coef(m)$district[["urbanY"]]),
  fitted = unname(fitted(m)),
  residuals_deviance = unname(residuals(m, type = "deviance")),
  residuals_pearson = unname(residuals(m, type = "pearson")),
  newdata = contra_new,
  new_response = unname(predict(m, newdata = contra_new, type = "response", allow.new.levels = TRUE)))

# SE of the random-intercept variance: glmmTMB reports log(sd) with its Wald SE (same Laplace deviance as glmer
# for the logit link); tau = sd^2, so se(tau) = 2 tau se(log sd) by the delta method.
suppressPackageStartupMessages(library(glmmTMB))
tmb <- glmmTMB(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial)
log_sd <- getME(tmb, "theta")[[1]]
se_log_sd <- sqrt(diag(vcov(tmb, full = TRUE)))[["theta_1|herd.1"]]
out$cbpp$glmmtmb_tau <- exp(2 * log_sd)
out$cbpp$glmmtmb_tau_se <- 2 * exp(2 * log_sd) * se_log_sd
out$glmmtmb_version <- as.character(packageVersion("glmmTMB"))

writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), file.path(out_dir, "glmm_predict_reference.json"))
