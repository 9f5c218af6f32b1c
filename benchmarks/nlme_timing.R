## Time nlme::lme on the structured level-1 error models that benchmarks/bench_likelihood.py --structured fits
## with bayeshlm, and write the data it reads (benchmarks/nlme_data/*.csv) and the timings
## (benchmarks/reference_timings_nlme.json). HS&B is built as bayeshlm's bundled `hsb` (same rows).
##
##   Rscript benchmarks/nlme_timing.R [repeats]      (default 5; run from the repository root)
##
## Each time is the median wall-clock (elapsed) and CPU (user + system) seconds of `repeats` fits after one
## untimed warm-up, with nlme's default controls (lmeControl()). Occasion indices are written to the data so that corAR1's
## form = ~ 1 | group (rows in time order) and bayeshlm's correlation="ar1", time="occ" describe one model.
suppressPackageStartupMessages({library(nlme); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
repeats <- if (length(args)) as.integer(args[1]) else 5L
out_dir <- file.path("benchmarks", "nlme_data")
dir.create(out_dir, showWarnings = FALSE)

orthodont <- as.data.frame(Orthodont)
orthodont$Subject <- as.character(orthodont$Subject)
orthodont <- orthodont[order(orthodont$Subject, orthodont$age), ]
orthodont$occ <- (orthodont$age - 8) / 2
bodyweight <- as.data.frame(BodyWeight)
bodyweight$Rat <- as.character(bodyweight$Rat)
bodyweight$Diet <- as.character(bodyweight$Diet)
bodyweight <- bodyweight[order(bodyweight$Rat, bodyweight$Time), ]
bodyweight$Time10 <- bodyweight$Time / 10
ovary <- as.data.frame(Ovary)
ovary$Mare <- as.character(ovary$Mare)
ovary <- ovary[order(ovary$Mare, ovary$Time), ]
ovary$s <- sin(2 * pi * ovary$Time)
ovary$c <- cos(2 * pi * ovary$Time)
ovary$occ <- ave(ovary$Time, ovary$Mare, FUN = seq_along) - 1
hsb <- merge(MathAchieve, MathAchSchool[, c("School", "Sector")], by = "School")
hsb <- data.frame(school = as.character(hsb$School), mathach = hsb$MathAch,
                  sector = as.integer(hsb$Sector == "Catholic"), ses = hsb$SES)
hsb$cses <- hsb$ses - ave(hsb$ses, hsb$school)
hsb <- hsb[order(hsb$school), ]
data <- list(orthodont = orthodont, bodyweight = bodyweight, ovary = ovary)  # HS&B: bayeshlm's bundled copy
for (name in names(data)) write.csv(data[[name]], file.path(out_dir, paste0(name, ".csv")), row.names = FALSE)

ctrl <- lmeControl(returnObject = TRUE)
models <- list(
  orthodont_ar1 = function() lme(distance ~ age, orthodont, ~ age | Subject, method = "REML",
                                 correlation = corAR1(form = ~ 1 | Subject), control = ctrl),
  orthodont_varident = function() lme(distance ~ age * Sex, orthodont, ~ 1 | Subject, method = "REML",
                                      weights = varIdent(form = ~ 1 | Sex), control = ctrl),
  bodyweight_car1 = function() lme(weight ~ Time * Diet, bodyweight, ~ Time | Rat, method = "REML",
                                   correlation = corCAR1(form = ~ Time | Rat), control = ctrl),
  bodyweight_loglinear = function() lme(weight ~ Time * Diet, bodyweight, ~ Time | Rat, method = "REML",
                                        weights = varExp(form = ~ Time10), control = ctrl),
  ovary_ar1 = function() lme(follicles ~ s + c, ovary, ~ 1 | Mare, method = "REML",
                             correlation = corAR1(form = ~ 1 | Mare), control = ctrl),
  hsb_varident = function() lme(mathach ~ sector * cses, hsb, ~ cses | school, method = "ML",
                                weights = varIdent(form = ~ 1 | sector), control = ctrl)
)
timings <- list(`_meta` = list(
  r = R.version.string, nlme = as.character(packageVersion("nlme")), repeats = repeats,
  description = paste("median elapsed and CPU seconds of lme() with lmeControl(returnObject = TRUE) defaults;",
                      "loglik = logLik of the fit (REML or ML as the model's method)")))
for (name in names(models)) {
  fit <- models[[name]]()
  times <- replicate(repeats, {
    t <- system.time(models[[name]]())
    c(elapsed = t[["elapsed"]], cpu = t[["user.self"]] + t[["sys.self"]])
  })
  timings[[name]] <- list(median_seconds = median(times["elapsed", ]), median_cpu_seconds = median(times["cpu", ]),
                          loglik = as.numeric(logLik(fit)))
  message(sprintf("%s: %.4f s (CPU %.4f s), logLik %.4f", name, median(times["elapsed", ]),
                  median(times["cpu", ]), as.numeric(logLik(fit))))
}
write_json(timings, file.path("benchmarks", "reference_timings_nlme.json"), auto_unbox = TRUE, digits = NA,
           pretty = TRUE)
