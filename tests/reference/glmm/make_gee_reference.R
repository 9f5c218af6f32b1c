# Population-average (GEE-type) coefficients for tests/test_glmm.py, written to gee_reference.json.
# Run from the repository root:  Rscript tests/reference/glmm/make_gee_reference.R
# 1. HLM's population-average estimator (R&B 2002, eqs. 10.17-10.19), written out densely here: working outcome
#    z = eta + (y - mu) / (dmu/deta) at eta = X gamma*, Sigma_j = W_j^-1 + Z_j T Z_j' with T = glmer's estimate,
#    gamma* by iterated GLS, model-based and robust (sandwich) covariances.
# 2. With T = 0 the estimator is the GLM with a cluster sandwich: geepack::geeglm(corstr = "independence")
#    gives the same estimates and robust SEs, a check of the sandwich by another package.
suppressPackageStartupMessages({library(lme4); library(geepack); library(jsonlite)})
out_dir <- "tests/reference/glmm"
data_dir <- Sys.getenv("BAYESHLM_DATA", "bayeshlm/datasets/data")
tight <- glmerControl(optimizer = "bobyqa", tolPwrss = 1e-12, optCtrl = list(rhoend = 1e-10, maxfun = 1e5))

contra <- read.csv(file.path(data_dir, "Contraception.csv"),
                   colClasses = c(woman = "factor", district = "factor", livch = "factor", urban = "factor",
                                  use = "factor"))
contra$livch <- factor(contra$livch, levels = c("0", "1", "2", "3+"))
contra$y <- as.integer(contra$use == "Y")
contra <- contra[order(contra$district), ]  # geeglm wants each cluster's rows together

pa_gee <- function(X, Z, y, cluster, T) {
  gamma <- coef(glm.fit(X, y, family = binomial()))
  for (iteration in 1:100) {
    eta <- drop(X %*% gamma); mu <- plogis(eta); d <- mu * (1 - mu)
    z <- eta + (y - mu) / d
    A <- matrix(0, ncol(X), ncol(X)); b <- numeric(ncol(X))
    for (j in unique(cluster)) {
      r <- cluster == j
      S <- diag(1 / d[r], sum(r)) + Z[r, , drop = FALSE] %*% T %*% t(Z[r, , drop = FALSE])
      Si <- solve(S)
      A <- A + t(X[r, , drop = FALSE]) %*% Si %*% X[r, , drop = FALSE]
      b <- b + t(X[r, , drop = FALSE]) %*% Si %*% z[r]
    }
    new <- drop(solve(A, b))
    done <- max(abs(new - gamma)) < 1e-12
    gamma <- new
    if (done) break
  }
  eta <- drop(X %*% gamma); mu <- plogis(eta); d <- mu * (1 - mu); z <- eta + (y - mu) / d; e <- z - eta
  A <- matrix(0, ncol(X), ncol(X)); meat <- A
  for (j in unique(cluster)) {
    r <- cluster == j
    S <- diag(1 / d[r], sum(r)) + Z[r, , drop = FALSE] %*% T %*% t(Z[r, , drop = FALSE])
    Si <- solve(S)
    A <- A + t(X[r, , drop = FALSE]) %*% Si %*% X[r, , drop = FALSE]
    s <- t(X[r, , drop = FALSE]) %*% Si %*% e[r]
    meat <- meat + s %*% t(s)
  }
  bread <- solve(A)
  list(beta = unname(gamma), se = unname(sqrt(diag(bread))), robust_se = unname(sqrt(diag(bread %*% meat %*% bread))),
       iterations = iteration)
}

out <- list(lme4_version = as.character(packageVersion("lme4")),
            geepack_version = as.character(packageVersion("geepack")), r_version = R.version.string)
X <- model.matrix(~ age + I(age^2) + urban + livch, contra)
for (model in c("intercept", "urban")) {
  form <- if (model == "intercept") use ~ age + I(age^2) + urban + livch + (1 | district) else
    use ~ age + I(age^2) + urban + livch + (urban | district)
  m <- glmer(form, contra, binomial, control = tight)
  T <- as.matrix(VarCorr(m)$district)
  Z <- if (model == "intercept") matrix(1, nrow(contra), 1) else model.matrix(~ urban, contra)
  out[[paste0("contraception_", model)]] <- c(pa_gee(X, Z, contra$y, contra$district, T),
                                              list(unit_specific = unname(fixef(m))))
}
# Nested chain: classes within schools, a random intercept each; the clusters are the schools and
# Sigma_school = diag(1 / d) + tau_school 11' + tau_class [same class].
nested <- read.csv(file.path(out_dir, "bernoulli_nested.csv"))
nested$class <- factor(paste(nested$school, nested$class)); nested$school <- factor(nested$school)
m <- glmer(y ~ x + (1 | school) + (1 | class), nested, binomial, control = tight)
vc <- VarCorr(m)
Zn <- cbind(1, model.matrix(~ 0 + class, nested))
Tn <- diag(c(vc$school[1, 1], rep(vc$class[1, 1], nlevels(nested$class))))
out$nested_intercepts <- c(pa_gee(model.matrix(~ x, nested), Zn, nested$y, nested$school, Tn),
                           list(unit_specific = unname(fixef(m))))

g <- geeglm(y ~ age + I(age^2) + urban + livch, family = binomial, data = contra, id = district,
            corstr = "independence")
out$independence <- list(beta = unname(coef(g)), robust_se = unname(sqrt(diag(g$geese$vbeta))))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), file.path(out_dir, "gee_reference.json"))
