# PQL reference for tests/test_glmm.py: Breslow & Clayton's iteration written out in R, each step a REML fit
# with known sampling variances 1/w (sigma^2 = 1, as HLM's PQL) by metafor::rma.mv; written to
# pql_reference.json. (MASS::glmmPQL estimates a residual scale as well, so it is a different estimator.)
# Run from the repository root:  Rscript tests/reference/glmm/make_pql_reference.R
suppressPackageStartupMessages(library(metafor))
out_dir <- "tests/reference/glmm"
data_dir <- "bayeshlm/datasets/data"

pql <- function(X, y, n, group, link) {
  fam <- binomial(link = link)
  beta <- glm.fit(X, cbind(y, n - y), family = fam)$coefficients
  eta <- drop(X %*% beta)
  for (iteration in 1:200) {
    mu <- fam$linkinv(eta); dmu <- fam$mu.eta(eta)
    w <- n * dmu^2 / (mu * (1 - mu))
    z <- eta + (y - n * mu) / (n * dmu)
    fit <- rma.mv(z, 1 / w, mods = X, intercept = FALSE, random = ~ 1 | group, method = "REML", sparse = TRUE,
                  control = list(optimizer = "optim", optmethod = "BFGS", reltol = 1e-14, maxit = 10000))
    blup <- ranef(fit)[[1]]
    new_eta <- drop(X %*% coef(fit)) + blup[as.character(group), "intrcpt"]
    change <- max(abs(new_eta - eta)); eta <- new_eta
    if (change < 1e-9) break
  }
  list(beta = unname(coef(fit)), se = unname(fit$se), tau = fit$sigma2, iterations = iteration,
       modes = unname(blup[levels(group), "intrcpt"]))
}

cbpp <- read.csv(file.path(data_dir, "cbpp.csv"), colClasses = c(herd = "factor", period = "factor"))
contra <- read.csv(file.path(data_dir, "Contraception.csv"),
                   colClasses = c(district = "factor", livch = "factor", urban = "factor", use = "factor"))
contra$livch <- factor(contra$livch, levels = c("0", "1", "2", "3+"))
fits <- list(
  cbpp_pql = pql(model.matrix(~ period, cbpp), cbpp$incidence, cbpp$size, cbpp$herd, "logit"),
  contraception_pql = pql(model.matrix(~ age + I(age^2) + urban + livch, contra), as.numeric(contra$use == "Y"),
                          rep(1, nrow(contra)), contra$district, "logit"))

to_json <- function(x) {
  if (is.list(x)) return(paste0("{", paste(sprintf("\"%s\": %s", names(x), sapply(x, to_json)), collapse = ", "), "}"))
  if (is.character(x)) return(sprintf("\"%s\"", x))
  values <- formatC(x, digits = 17, format = "g")
  if (length(x) == 1) return(values)
  paste0("[", paste(values, collapse = ", "), "]")
}
writeLines(to_json(c(list(metafor_version = as.character(packageVersion("metafor"))), fits)),
           file.path(out_dir, "pql_reference.json"))
