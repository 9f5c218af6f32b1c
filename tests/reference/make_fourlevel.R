## make_fourlevel.R -- a simulated four-level data set and lme4's fits of it, for the tests of nesting
## chains longer than three levels (tests/test_four_level.py).
##
## Run from the repository root:   Rscript tests/reference/make_fourlevel.R
## Writes tests/reference/fourlevel.csv (the data) and tests/reference/lme4_fourlevel.json (the fits).
## Pupils (8 per class) in classes (4 per school) in schools (4 per district) in 12 districts: 1,536 rows.
## Group IDs are unique across the data set, so (1 | district) + (x | school) + (1 | class) is the nesting
## district / school / class.
suppressPackageStartupMessages({ library(lme4); library(jsonlite) })
set.seed(20261204)
n_district <- 12; schools_per <- 4; classes_per <- 4; pupils_per <- 8
district <- rep(seq_len(n_district), each = schools_per * classes_per * pupils_per)
school <- rep(seq_len(n_district * schools_per), each = classes_per * pupils_per)
class <- rep(seq_len(n_district * schools_per * classes_per), each = pupils_per)
n <- length(class)
x <- rnorm(n)
w <- rnorm(max(school))[school]  # a school-level predictor
u_district <- rnorm(n_district, sd = 1.0)
u_school <- cbind(rnorm(max(school), sd = 0.8), rnorm(max(school), sd = 0.4))
u_class <- rnorm(max(class), sd = 0.6)
y <- 5 + 1.5 * x + 0.7 * w + u_district[district] + u_school[school, 1] + u_school[school, 2] * x +
  u_class[class] + rnorm(n, sd = 1.2)
data <- data.frame(y = y, x = x, w = w, district = sprintf("d%02d", district), school = sprintf("s%03d", school),
                   class = sprintf("c%03d", class))
write.csv(data, "tests/reference/fourlevel.csv", row.names = FALSE)

formula <- y ~ x + w + (1 | district) + (x | school) + (1 | class)
entry <- function(REML) {
  fit <- lmer(formula, data = data, REML = REML,
              control = lmerControl(optimizer = "bobyqa", optCtrl = list(rhobeg = 2e-3, rhoend = 1e-10)))
  vc <- VarCorr(fit)
  list(formula = deparse(formula), REML = REML,
       criterion = if (REML) REMLcrit(fit) else deviance(fit),
       fixef = as.list(fixef(fit)), se = as.list(sqrt(diag(as.matrix(vcov(fit))))),
       tau_district = as.matrix(vc$district)[1, 1], tau_class = as.matrix(vc$class)[1, 1],
       T_school = unname(as.matrix(vc$school)), sigma2 = sigma(fit)^2)
}
out <- list(`_meta` = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")), seed = 20261204),
            reml = entry(TRUE), ml = entry(FALSE))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), "tests/reference/lme4_fourlevel.json")
