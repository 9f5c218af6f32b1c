## make_inference_reference.R -- reference numbers for tests/test_inference.py (issue 26): lmerTest's
## Satterthwaite df and tests, pbkrtest's Kenward-Roger df, lme4's profile intervals.
##
## Run from the repository root:
##     Rscript tests/reference/make_inference_reference.R
## Writes tests/reference/inference_reference.json. R is not a dependency of bayeshlm: the JSON is
## committed and the Python tests only read it. Data are the CSVs in shared/data, rebuilt exactly as
## make_reference.R (and bayeshlm.datasets) build them.
##
## Debian 12 packages: r-cran-lme4 r-cran-lmertest r-cran-pbkrtest r-cran-jsonlite.
##
## Models: HS&B intercepts-and-slopes (all 160 schools, and the first 20: small J), sleepstudy, ScotsSec
## (crossed) and egsingle (three levels); Kenward-Roger for the first three only.
##
## Notes on what the numbers are:
## - lmerTest's Satterthwaite df use A = 2 H^-1, H the numDeriv Hessian of the (REML) deviance in
##   varpar = (theta, sigma) (model@vcov_varpar, written as "vcov_varpar").
## - lme4's confint(method = "profile") refits the model by ML before profiling (lme4:::devfun2 calls
##   refitML), so the REML and the ML fit give the same intervals: those of the ML deviance (fixed effects
##   included: each is profiled over the others and the variance parameters). The profile
##   is evaluated on a grid and interpolated by splines, so its ends are approximate.
## - wald_chi2 is the hand computation b' (L V L')^-1 b with b = L beta and V = vcov(fit).

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(pbkrtest)
  library(jsonlite)
})

data_dir <- Sys.getenv("BAYESHLM_SHARED_DATA", "../shared/data")
out_dir <- file.path("tests", "reference")
rd <- function(name, ...) read.csv(file.path(data_dir, name), stringsAsFactors = FALSE, ...)

## HS&B in the book's form (as make_reference.R)
stu <- rd("MathAchieve.csv", colClasses = c(School = "character"))
sch <- rd("MathAchSchool.csv", colClasses = c(School = "character"))
stopifnot(nrow(stu) == 7185, nrow(sch) == 160, setequal(stu$School, sch$School))
sch$meanses_c <- sch$MEANSES - mean(sch$MEANSES)
sch$sector01 <- as.numeric(sch$Sector == "Catholic")
idx <- match(stu$School, sch$School)
hsb <- data.frame(
  school = factor(stu$School),
  mathach = stu$MathAch,
  ses = stu$SES,
  cses = stu$SES - ave(stu$SES, stu$School),
  meanses = sch$meanses_c[idx],
  sector = sch$sector01[idx]
)
sleep <- rd("sleepstudy.csv", colClasses = c(Subject = "character"))
sleep$Subject <- factor(sleep$Subject)
sleep <- sleep[order(sleep$Subject, sleep$Days), ]
rownames(sleep) <- NULL

## small-J subset: the first 20 schools (4-digit IDs, so string order is numeric order)
hsb20 <- droplevels(hsb[hsb$school %in% levels(hsb$school)[1:20], ])
scots <- rd("ScotsSec.csv", colClasses = c(primary = "character", second = "character"))
scots$primary <- factor(scots$primary)
scots$second <- factor(scots$second)
scots$sex <- factor(scots$sex)
eg <- rd("egsingle.csv", colClasses = c(schoolid = "character", childid = "character"))
eg$childid <- factor(eg$childid)
eg$schoolid <- factor(eg$schoolid)

ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))

## L with one row per element of rows: list(row_name = c(coef = weight, ...), ...)
contrast_matrix <- function(fit, rows) {
  L <- matrix(0, length(rows), length(fixef(fit)), dimnames = list(names(rows), names(fixef(fit))))
  for (r in names(rows)) L[r, names(rows[[r]])] <- unlist(rows[[r]])
  L
}

wald <- function(fit, L) {
  b <- drop(L %*% fixef(fit))
  V <- as.matrix(vcov(fit))
  drop(t(b) %*% solve(L %*% V %*% t(L), b))
}

entry <- function(formula, data, joint = list(), single = list(), profile = FALSE, kr = TRUE) {
  fit <- lmerTest::lmer(formula, data = data, REML = TRUE, control = ctrl)
  sat <- coef(summary(fit, ddf = "Satterthwaite"))
  out <- list(
    formula = deparse(formula, width.cutoff = 500),
    theta = unname(getME(fit, "theta")),
    sigma = sigma(fit),
    beta = as.list(fixef(fit)),
    vcov = unname(as.matrix(vcov(fit))),
    vcov_varpar = unname(fit@vcov_varpar),
    satterthwaite = list(df = as.list(sat[, "df"]), t = as.list(sat[, "t value"]),
                         p = as.list(sat[, "Pr(>|t|)"]))
  )
  if (kr) {  # pbkrtest works with n x n matrices: only for the smaller data sets
    k <- coef(summary(fit, ddf = "Kenward-Roger"))
    out$kenward_roger <- list(df = as.list(k[, "df"]), se = as.list(k[, "Std. Error"]),
                              p = as.list(k[, "Pr(>|t|)"]))
  }
  out$joint <- lapply(joint, function(rows) {
    L <- contrast_matrix(fit, rows)
    s <- contest(fit, L, joint = TRUE, ddf = "Satterthwaite")
    res <- list(L = unname(L), F = s[["F value"]], num_df = s[["NumDF"]], den_df = s[["DenDF"]],
                p = s[["Pr(>F)"]], wald_chi2 = wald(fit, L))
    if (kr) {
      k <- contest(fit, L, joint = TRUE, ddf = "Kenward-Roger")
      res <- c(res, list(kr_F = k[["F value"]], kr_den_df = k[["DenDF"]], kr_p = k[["Pr(>F)"]]))
    }
    res
  })
  out$single <- lapply(single, function(rows) {
    L <- contrast_matrix(fit, rows)
    s <- contest(fit, L, joint = FALSE, ddf = "Satterthwaite", confint = TRUE)
    list(L = unname(L), estimate = s[["Estimate"]], se = s[["Std. Error"]], df = s[["df"]],
         t = s[["t value"]], p = s[["Pr(>|t|)"]], lower = s[["lower"]], upper = s[["upper"]])
  })
  if (profile) {
    ml_test <- lmerTest::lmer(formula, data = data, REML = FALSE, control = ctrl)
    out$ml_satterthwaite_df <- as.list(coef(summary(ml_test, ddf = "Satterthwaite"))[, "df"])
    ml <- lme4::lmer(formula, data = data, REML = FALSE, control = ctrl)
    ci <- confint(ml, method = "profile", oldNames = FALSE)
    out$ml_theta <- unname(getME(ml, "theta"))
    out$ml_sigma <- sigma(ml)
    out$profile_ml <- list(names = rownames(ci), lower = unname(ci[, 1]), upper = unname(ci[, 2]))
  }
  out
}

ref <- list(
  `_meta` = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                 lmerTest = as.character(packageVersion("lmerTest")),
                 pbkrtest = as.character(packageVersion("pbkrtest"))),
  hsb_full = entry(mathach ~ meanses * cses + sector * cses + (cses | school), hsb,
                   joint = list(cross_level = list(a = c(`meanses:cses` = 1), b = c(`cses:sector` = 1))),
                   single = list(catholic = list(a = c(sector = 1, `cses:sector` = 1))),
                   profile = TRUE),
  sleep_corr = entry(Reaction ~ Days + (Days | Subject), sleep,
                     joint = list(days = list(a = c(Days = 1)),
                                  both = list(a = c(`(Intercept)` = 1), b = c(Days = 1))),
                     single = list(day10 = list(a = c(`(Intercept)` = 1, Days = 10))),
                     profile = TRUE),
  hsb_small = entry(mathach ~ meanses * cses + sector * cses + (cses | school), hsb20,
                    joint = list(cross_level = list(a = c(`meanses:cses` = 1), b = c(`cses:sector` = 1))),
                    profile = TRUE),
  scotssec = entry(attain ~ verbal + sex + (1 | primary) + (1 | second), scots,
                   joint = list(both = list(a = c(verbal = 1), b = c(sexM = 1))), kr = FALSE),
  egsingle = entry(math ~ year + (year | childid) + (year | schoolid), eg, kr = FALSE)
)
path <- file.path(out_dir, "inference_reference.json")
writeLines(toJSON(ref, digits = NA, auto_unbox = TRUE, pretty = TRUE), path)
message("wrote ", path)
