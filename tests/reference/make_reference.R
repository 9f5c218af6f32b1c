## make_reference.R -- reference numbers from R (lme4, nlme, metafor) for the bayeshlm tests.
##
## Run from the repository root:
##     Rscript tests/reference/make_reference.R
## Writes (next to this script)
##     tests/reference/lme4_reference.json
##     tests/reference/nlme_reference.json
##     tests/reference/metafor_reference.json
## and benchmarks/reference_timings_lme4.json.
##
## R is NOT a dependency of bayeshlm or of CI: this script and the JSON it writes are committed,
## the Python tests only read the JSON.  Data are the CSVs in shared/data (the same files the Python
## side loads), never R package data, so both sides see bit-identical inputs.
##
## Debian 12 packages: r-base-core r-cran-lme4 r-cran-nlme r-cran-metafor r-cran-metadat
## r-cran-jsonlite (see tests/reference/README.md for the versions used).
##
## JSON layout: a top-level object keyed by a short model id; every model entry is self-contained.
## The key "_meta" (not a model) holds versions and the data conventions.  Matrices are row-major
## arrays of arrays.  Numbers are written with full double precision (shortest exact decimal,
## checked by a read-back).

suppressPackageStartupMessages({
  library(lme4)
  library(nlme)
  library(metafor)
  library(jsonlite)
})

data_dir <- Sys.getenv("BAYESHLM_SHARED_DATA", "../shared/data")
out_dir <- file.path("tests", "reference")
bench_dir <- "benchmarks"
dir.create(out_dir, recursive = TRUE, showWarnings = FALSE)
dir.create(bench_dir, recursive = TRUE, showWarnings = FALSE)

## Number of repeats for the timing benchmark (median is reported).
n_timing_reps <- as.integer(Sys.getenv("BAYESHLM_TIMING_REPS", "5"))

rd <- function(name, ...) read.csv(file.path(data_dir, name), stringsAsFactors = FALSE, ...)

versions <- list(
  R = R.version.string,
  lme4 = as.character(packageVersion("lme4")),
  Matrix = as.character(packageVersion("Matrix")),
  minqa = as.character(packageVersion("minqa")),
  nloptr = as.character(packageVersion("nloptr")),
  nlme = as.character(packageVersion("nlme")),
  metafor = as.character(packageVersion("metafor")),
  jsonlite = as.character(packageVersion("jsonlite"))
)

## ---------------------------------------------------------------------------------------------
## Data
## ---------------------------------------------------------------------------------------------

## HS&B in Raudenbush & Bryk's book form (digest section 3.2):
##   mathach = MathAch; ses = SES; cses = SES - school mean of SES over that school's student rows;
##   meanses = school file's MEANSES centred at the mean of the 160 school values (not students);
##   sector = 1 if Catholic else 0; school = School (factor; IDs are 4-digit so the level order is
##   also the numeric order).
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

## sleepstudy: Subject as a factor of its labels; rows sorted by Subject then Days (as in lme4).
sleep <- rd("sleepstudy.csv", colClasses = c(Subject = "character"))
sleep$Subject <- factor(sleep$Subject)
sleep <- sleep[order(sleep$Subject, sleep$Days), ]
rownames(sleep) <- NULL

## egsingle: childid must be unique across schools (each child in exactly one school).
eg <- rd("egsingle.csv", colClasses = c(schoolid = "character", childid = "character"))
eg_child_nschools <- tapply(eg$schoolid, eg$childid, function(s) length(unique(s)))
stopifnot(all(eg_child_nschools == 1))
eg$childid <- factor(eg$childid)
eg$schoolid <- factor(eg$schoolid)
## black, hispanic are 0/1 in the CSV and read as numeric, so lme4 names them "black", "hispanic";
## lowinc is the school's percent low-income (0-100), used as is.
stopifnot(is.numeric(eg$black), is.numeric(eg$hispanic), is.numeric(eg$lowinc))

## ScotsSec: primary and second are factors; sex is a factor with R's default (alphabetical)
## levels F < M, so the fixed effect is "sexM" (mlmRev's own factor has levels M, F -> "sexF").
scots <- rd("ScotsSec.csv", colClasses = c(primary = "character", second = "character"))
scots$primary <- factor(scots$primary)
scots$second <- factor(scots$second)
scots$sex <- factor(scots$sex)

## Oxboys: Subject and Occasion factors; rows sorted by Subject then Occasion (AR(1) order).
ox <- rd("Oxboys.csv", colClasses = c(Subject = "character", Occasion = "character"))
ox$Occasion <- factor(ox$Occasion, levels = as.character(sort(unique(as.integer(ox$Occasion)))))
ox$Subject <- factor(ox$Subject, levels = as.character(sort(unique(as.integer(ox$Subject)))))
ox <- ox[order(ox$Subject, ox$Occasion), ]
rownames(ox) <- NULL

## ---------------------------------------------------------------------------------------------
## Helpers
## ---------------------------------------------------------------------------------------------

named_list <- function(x) as.list(x)                          # named vector -> JSON object
mat <- function(m) { m <- as.matrix(m); dimnames(m) <- NULL; m } # plain row-major matrix

## Tight optimiser settings; each lme4 model is fitted with all three and the fit with the lowest
## criterion is kept (the three criteria are recorded so the optimisation noise is visible).
ctrl_list <- list(
  bobyqa = lmerControl(optimizer = "bobyqa",
                       optCtrl = list(rhoend = 1e-10, maxfun = 1e5)),
  nloptwrap = lmerControl(optimizer = "nloptwrap",
                          optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14, xtol_rel = 1e-12,
                                         ftol_rel = 1e-15, maxeval = 1e5)),
  Nelder_Mead = lmerControl(optimizer = "Nelder_Mead",
                            optCtrl = list(FtolAbs = 1e-12, FtolRel = 1e-15, XtolRel = 1e-10,
                                           maxfun = 1e5))
)

crit <- function(fit) if (isREML(fit)) REMLcrit(fit) else deviance(fit)

fit_lmer_best <- function(formula, data, REML) {
  fits <- lapply(names(ctrl_list), function(nm) {
    msgs <- character(0)
    f <- withCallingHandlers(
      lmer(formula, data = data, REML = REML, control = ctrl_list[[nm]]),
      warning = function(w) { msgs <<- c(msgs, conditionMessage(w)); invokeRestart("muffleWarning") },
      message = function(m) { msgs <<- c(msgs, conditionMessage(m)); invokeRestart("muffleMessage") })
    list(fit = f, msgs = c(msgs, f@optinfo$conv$lme4$messages))
  })
  names(fits) <- names(ctrl_list)
  crits <- sapply(fits, function(z) crit(z$fit))
  best <- names(which.min(crits))
  list(fit = fits[[best]]$fit, optimizer = best, crits = as.list(crits),
       msgs = lapply(fits, function(z) unique(z$msgs)))
}

## Full conditional covariance of the random effects given y at the estimates (beta fixed at its
## estimate), i.e. what lme4 calls condVar / postVar, but including the covariances between the
## separate terms of a factor (needed for (Days || Subject), where lme4's postVar omits them):
##   Var(b | y) = sigma^2 Lambda (Lambda' Z' Z Lambda + I)^{-1} Lambda'
full_condvar <- function(fit) {
  Lt <- getME(fit, "Lambdat"); Zt <- getME(fit, "Zt")
  A <- Lt %*% Zt %*% t(Zt) %*% t(Lt)
  diag(A) <- diag(A) + 1
  as.matrix(sigma(fit)^2 * t(Lt) %*% solve(A, Lt))
}

## Random effects (conditional modes) and conditional variances per grouping factor, in JSON form.
ranef_json <- function(fit) {
  re <- ranef(fit, condVar = TRUE)
  CV <- full_condvar(fit)
  ## column index of each random effect in b: ordered by term, then level, then coefficient
  cnms <- getME(fit, "cnms"); flist <- getME(fit, "flist"); Gp <- getME(fit, "Gp")
  fac_of_term <- names(cnms)
  fnames <- names(flist)[attr(flist, "assign")]
  out <- list()
  for (fn in names(re)) {
    r <- re[[fn]]
    lev <- rownames(r); nms <- colnames(r); q <- length(nms); nl <- length(lev)
    ## map (level, coefficient) -> index in b
    bidx <- matrix(NA_integer_, nl, q)
    for (t in which(fnames == fn)) {
      tn <- cnms[[t]]; qt <- length(tn)
      base <- Gp[t]
      for (k in seq_len(qt)) {
        col <- match(tn[k], nms)
        bidx[, col] <- base + (seq_len(nl) - 1L) * qt + k
      }
    }
    stopifnot(!anyNA(bidx))
    condvar <- lapply(seq_len(nl), function(i) mat(CV[bidx[i, ], bidx[i, ], drop = FALSE]))
    ## check against lme4's own postVar (diagonal blocks per term)
    pv <- attr(r, "postVar")
    if (is.list(pv)) {
      for (k in seq_along(pv)) {
        col <- match(names(pv)[k], nms)
        stopifnot(max(abs(pv[[k]][1, 1, ] - sapply(condvar, function(m) m[col, col]))) <
                    1e-8 * max(1, max(abs(pv[[k]]))))
      }
    } else {
      stopifnot(max(abs(unlist(lapply(seq_len(nl), function(i) pv[, , i] - condvar[[i]])))) <
                  1e-8 * max(1, max(abs(pv))))
    }
    out[[fn]] <- list(levels = lev, names = nms, values = mat(r), condvar = condvar)
  }
  out
}

## Variance-covariance matrix of each grouping factor (terms of the same factor, e.g. the two
## terms of (Days || Subject), are merged into one block-diagonal matrix).
varcorr_json <- function(fit) {
  vc <- VarCorr(fit)
  cnms <- getME(fit, "cnms")
  flist <- getME(fit, "flist")
  fnames <- names(flist)[attr(flist, "assign")]
  out <- list()
  for (fn in unique(fnames)) {
    terms <- which(fnames == fn)
    nms <- unlist(cnms[terms], use.names = FALSE)
    m <- matrix(0, length(nms), length(nms))
    pos <- 0
    for (t in terms) {
      v <- as.matrix(vc[[t]]); qt <- nrow(v)
      m[pos + seq_len(qt), pos + seq_len(qt)] <- v
      pos <- pos + qt
    }
    out[[fn]] <- list(names = nms, cov = mat(m))
  }
  out
}

lmer_entry <- function(formula, data, REML, data_name, with_ranef = FALSE, with_coef = FALSE) {
  b <- fit_lmer_best(formula, data, REML)
  fit <- b$fit
  th <- getME(fit, "theta")
  e <- list(
    formula = paste(deparse(formula, width.cutoff = 500L), collapse = " "),
    data = data_name,
    method = if (REML) "REML" else "ML",
    criterion = crit(fit),
    criterion_type = if (REML) "REMLcrit" else "deviance",
    loglik = as.numeric(logLik(fit)),
    fixef = named_list(fixef(fit)),
    fixef_se = named_list(sqrt(diag(as.matrix(vcov(fit))))),
    fixef_vcov = list(names = names(fixef(fit)), cov = mat(vcov(fit))),
    theta = I(unname(th)),
    theta_names = I(names(th)),
    varcorr = varcorr_json(fit),
    sigma2 = sigma(fit)^2,
    ngroups = as.list(ngrps(fit)),
    nobs = nobs(fit),
    singular = isSingular(fit),
    optimizer = b$optimizer,
    criterion_by_optimizer = b$crits,
    messages_by_optimizer = lapply(b$msgs, I)
  )
  if (with_ranef) e$ranef <- ranef_json(fit)
  if (with_coef) {
    e$coef <- lapply(coef(fit), function(cf)
      list(levels = rownames(cf), names = colnames(cf), values = mat(cf)))
  }
  list(entry = e, fit = fit)
}

## All numbers in a nested list, depth first, matrices row-major (the order JSON uses); NA dropped
## (written as null).
numbers_in <- function(x) {
  if (is.list(x)) return(unlist(lapply(x, numbers_in), use.names = FALSE))
  if (is.numeric(x)) {
    v <- if (is.matrix(x)) as.numeric(t(x)) else as.numeric(x)
    return(v[!is.na(v)])
  }
  numeric(0)
}

## jsonlite 1.8.4 writes at most 15 significant digits whatever `digits` says, so numbers are
## formatted here with the shortest of %.15g / %.16g / %.17g that reads back exactly, and passed
## to jsonlite verbatim.  Scalars (unless wrapped in I()) become JSON numbers, other vectors
## arrays, matrices row-major arrays of arrays; NA / non-finite become null.
fmt_num <- function(v) {
  v <- as.numeric(v)
  out <- sprintf("%.15g", v)
  for (d in c(16, 17)) {
    bad <- is.finite(v) & as.numeric(out) != v
    out[bad] <- sprintf(paste0("%.", d, "g"), v[bad])
  }
  out[!is.finite(v)] <- "null"
  out
}
exact_numbers <- function(x) {
  if (is.list(x)) {
    y <- lapply(x, exact_numbers)
    attributes(y) <- attributes(x)[intersect(names(attributes(x)), "names")]
    return(y)
  }
  if (!is.numeric(x)) return(x)
  vec <- function(v) paste0("[", paste(fmt_num(v), collapse = ","), "]")
  if (is.matrix(x)) {
    txt <- paste0("[", paste(apply(x, 1, vec), collapse = ","), "]")
    if (nrow(x) == 0) txt <- "[]"
  } else if (length(x) == 1 && !inherits(x, "AsIs")) {
    txt <- fmt_num(as.numeric(x))
  } else {
    txt <- vec(as.numeric(x))
  }
  structure(txt, class = "json")
}

write_ref <- function(x, path) {
  txt <- toJSON(exact_numbers(x), auto_unbox = TRUE, pretty = TRUE, null = "null", na = "null",
                json_verbatim = TRUE)
  writeLines(txt, path)
  ## full-precision round-trip check on every number
  y <- fromJSON(path, simplifyVector = FALSE)
  a <- numbers_in(x); b <- numbers_in(y)
  if (length(a) != length(b) || any(a != b)) stop("JSON round trip lost precision in ", path)
  invisible(NULL)
}

## ---------------------------------------------------------------------------------------------
## lme4
## ---------------------------------------------------------------------------------------------

lme4_specs <- list(
  ## HS&B, Tables 4.2-4.5
  hsb_anova    = list(f = mathach ~ 1 + (1 | school),            d = "hsb", re = TRUE),
  hsb_means    = list(f = mathach ~ meanses + (1 | school),      d = "hsb", re = TRUE),
  hsb_randcoef = list(f = mathach ~ cses + (cses | school),      d = "hsb", re = TRUE),
  hsb_full     = list(f = mathach ~ meanses * cses + sector * cses + (cses | school),
                      d = "hsb", re = TRUE),
  ## sleepstudy
  sleep_corr   = list(f = Reaction ~ Days + (Days | Subject),    d = "sleep", re = TRUE),
  sleep_uncorr = list(f = Reaction ~ Days + (Days || Subject),   d = "sleep", re = TRUE),
  sleep_int    = list(f = Reaction ~ Days + (1 | Subject),       d = "sleep", re = TRUE),
  ## egsingle (R&B ch. 8 style three-level growth, as crossed-in-form nested factors)
  egsingle_uncond = list(f = math ~ year + (year | childid) + (year | schoolid), d = "eg", re = FALSE),
  egsingle_cond   = list(f = math ~ year * (black + hispanic + lowinc) +
                           (year | childid) + (year | schoolid), d = "eg", re = FALSE),
  ## ScotsSec, cross-classified
  scotssec = list(f = attain ~ verbal + sex + (1 | primary) + (1 | second), d = "scots", re = FALSE)
)
datasets <- list(
  hsb = list(data = hsb, name = "MathAchieve.csv + MathAchSchool.csv (R&B book form)"),
  sleep = list(data = sleep, name = "sleepstudy.csv"),
  eg = list(data = eg, name = "egsingle.csv"),
  scots = list(data = scots, name = "ScotsSec.csv")
)

lme4_ref <- list()
for (id in names(lme4_specs)) {
  s <- lme4_specs[[id]]
  for (REML in c(TRUE, FALSE)) {
    key <- paste0(id, if (REML) "_reml" else "_ml")
    message("lme4: ", key)
    ds <- datasets[[s$d]]
    lme4_ref[[key]] <- lmer_entry(s$f, ds$data, REML, ds$name,
                                  with_ranef = s$re, with_coef = s$d == "hsb")$entry
  }
}

## Table 5.9 (i): homogeneous level-1 variance, full ML.
message("lme4: hsb_t59_homo_ml")
lme4_ref[["hsb_t59_homo_ml"]] <- lmer_entry(mathach ~ sector * cses + (cses | school), hsb,
                                            REML = FALSE, datasets$hsb$name,
                                            with_ranef = TRUE, with_coef = TRUE)$entry

lme4_ref <- c(list(`_meta` = list(
  versions = versions,
  description = paste(
    "lme4 reference fits. criterion = REMLcrit(fit) for REML, deviance(fit) for ML; loglik =",
    "logLik(fit) (the REML log-likelihood for REML fits); fixef_se = sqrt(diag(vcov(fit)));",
    "varcorr = VarCorr per grouping factor as a variance matrix (terms of one factor merged,",
    "block-diagonal); theta = getME(fit, 'theta'); sigma2 = sigma(fit)^2. Each model was fitted",
    "with bobyqa, nloptwrap and Nelder_Mead at tight tolerances and the lowest criterion kept.",
    "ranef: conditional modes; condvar[level] = full q x q conditional covariance",
    "sigma^2 Lambda (Lambda'Z'Z Lambda + I)^-1 Lambda' (equals lme4's postVar; for ||",
    "models it also gives the off-diagonal that postVar omits). coef = coef(fit)."),
  conventions = list(
    hsb = paste("mathach = MathAch; ses = SES; cses = SES - mean(SES) within school (student rows);",
                "meanses = MathAchSchool MEANSES - mean over the 160 schools; sector = 1 if Catholic;",
                "school = factor(School)"),
    egsingle = "childid, schoolid factors; black, hispanic numeric 0/1; lowinc percent as is; year as is",
    scotssec = "primary, second factors; sex factor with levels F, M (fixef 'sexM')",
    sleepstudy = "Subject factor of its labels"
  ))), lme4_ref)
write_ref(lme4_ref, file.path(out_dir, "lme4_reference.json"))

## ---------------------------------------------------------------------------------------------
## nlme
## ---------------------------------------------------------------------------------------------

nlme_ctrl_tight <- lmeControl(maxIter = 1000, msMaxIter = 1000, niterEM = 100, msMaxEval = 5000,
                              tolerance = 1e-10, msTol = 1e-12, returnObject = FALSE)
nlme_ctrl_default <- lmeControl(maxIter = 1000, msMaxIter = 1000, msMaxEval = 5000)

## Fit with tight tolerances; if that errors (nlme stops on non-convergence), retry with nlme's
## default tolerances and record that.
fit_lme <- function(fixed, random, data, method, correlation = NULL, weights = NULL) {
  args <- list(fixed = fixed, random = random, data = data, method = method,
               correlation = correlation, weights = weights)
  status <- "converged (tight tolerances)"
  fit <- tryCatch(do.call(lme, c(args, list(control = nlme_ctrl_tight))),
                  error = function(e) e)
  if (inherits(fit, "error")) {
    status <- paste0("tight tolerances failed (", conditionMessage(fit),
                     "); refitted with nlme default tolerances")
    fit <- tryCatch(do.call(lme, c(args, list(control = nlme_ctrl_default))),
                    error = function(e) e)
    if (inherits(fit, "error")) {
      ## Last resort, for the record only: optim's Nelder-Mead (no gradient, so it stops
      ## somewhere).  Its numbers are stored under "nonconverged_best_found", not as results.
      status <- paste0("FAILED: nlminb did not converge with tight or default tolerances (",
                       conditionMessage(fit), ")")
      nm <- tryCatch(do.call(lme, c(args, list(control = lmeControl(
        opt = "optim", optimMethod = "Nelder-Mead", maxIter = 1000, msMaxIter = 20000,
        msMaxEval = 20000, msTol = 1e-14)))), error = function(e) NULL)
      return(list(fit = NULL, status = status, nm_fit = nm))
    }
  }
  list(fit = fit, status = status)
}

lme_entry <- function(fixed, random, data, method, data_name, correlation = NULL, weights = NULL,
                      corr_desc = NULL, weights_desc = NULL) {
  r <- fit_lme(fixed, random, data, method, correlation, weights)
  e <- list(
    fixed = paste(deparse(fixed), collapse = " "),
    random = paste(deparse(random), collapse = " "),
    correlation = if (is.null(corr_desc)) "none" else corr_desc,
    weights = if (is.null(weights_desc)) "none" else weights_desc,
    data = data_name,
    method = method,
    status = r$status
  )
  fit <- r$fit
  if (is.null(fit)) {
    if (!is.null(r$nm_fit)) {
      nm <- r$nm_fit
      re_cov <- as.matrix(nm$modelStruct$reStruct)[[1]] * nm$sigma^2
      e$nonconverged_best_found <- list(
        note = paste("NOT A REFERENCE: optim Nelder-Mead end point, for diagnosis only.",
                     "The unconstrained parameters show where the fit heads (a log-Cholesky",
                     "diagonal running to -Inf means a random-effect correlation -> +-1)."),
        loglik = as.numeric(logLik(nm)),
        fixef = named_list(fixef(nm)),
        re_cov = mat(re_cov),
        re_corr = cov2cor(re_cov)[1, 2],
        sigma2 = nm$sigma^2,
        ar1_phi = if (!is.null(nm$modelStruct$corStruct))
          as.numeric(coef(nm$modelStruct$corStruct, unconstrained = FALSE)) else NULL,
        unconstrained_parameters = named_list(coef(nm$modelStruct, unconstrained = TRUE)))
    }
    return(e)
  }
  ## random-effect covariance: pdMatrix is relative to sigma^2
  re_cov <- as.matrix(fit$modelStruct$reStruct)[[1]] * fit$sigma^2
  e$loglik <- as.numeric(logLik(fit))
  e$criterion <- -2 * as.numeric(logLik(fit))
  e$criterion_type <- if (method == "REML") "-2 * REML loglik" else "-2 * loglik (deviance)"
  e$fixef <- named_list(fixef(fit))
  e$fixef_se <- named_list(sqrt(diag(vcov(fit))))
  e$fixef_vcov <- list(names = names(fixef(fit)), cov = mat(vcov(fit)))
  e$varcorr <- setNames(list(list(names = rownames(re_cov), cov = mat(re_cov))),
                        names(fit$groups)[1])
  e$sigma2 <- fit$sigma^2
  e$nobs <- fit$dims$N
  e$ngroups <- as.list(fit$dims$ngrps[names(fit$groups)])
  if (!is.null(fit$modelStruct$corStruct)) {
    e$ar1_phi <- as.numeric(coef(fit$modelStruct$corStruct, unconstrained = FALSE))
  }
  if (!is.null(fit$modelStruct$varStruct)) {
    ## nlme varIdent: SD ratio of each stratum to the reference stratum (ratio 1)
    rat <- coef(fit$modelStruct$varStruct, unconstrained = FALSE, allCoef = TRUE)
    e$varident_ratios <- named_list(rat)
    e$varident_sigma2 <- named_list(fit$sigma^2 * rat^2)
    e$varident_reference <- names(rat)[rat == 1 & seq_along(rat) == 1]
    e$varident_description <- paste("varident_ratios = SD ratios sigma_s / sigma_ref",
                                    "(nlme's coef(varStruct, unconstrained = FALSE, allCoef = TRUE));",
                                    "sigma2 is the reference stratum's variance; varident_sigma2 =",
                                    "sigma2 * ratio^2 per stratum")
  }
  e
}

nlme_ref <- list()
for (method in c("REML", "ML")) {
  sfx <- if (method == "REML") "_reml" else "_ml"
  ## sleepstudy (rows ordered by Subject, Days)
  message("nlme: sleepstudy ", method)
  nlme_ref[[paste0("sleep_lme", sfx)]] <- lme_entry(
    Reaction ~ Days, ~ Days | Subject, sleep, method, "sleepstudy.csv")
  nlme_ref[[paste0("sleep_lme_ar1", sfx)]] <- lme_entry(
    Reaction ~ Days, ~ Days | Subject, sleep, method, "sleepstudy.csv",
    correlation = corAR1(form = ~ 1 | Subject),
    corr_desc = "corAR1(form = ~ 1 | Subject), rows in Days order within Subject")
  nlme_ref[[paste0("sleep_lme_varident", sfx)]] <- lme_entry(
    Reaction ~ Days, ~ Days | Subject, sleep, method, "sleepstudy.csv",
    weights = varIdent(form = ~ 1 | Days), weights_desc = "varIdent(form = ~ 1 | Days)")
  ## Oxboys (rows ordered by Subject, Occasion)
  message("nlme: Oxboys ", method)
  nlme_ref[[paste0("oxboys_lme", sfx)]] <- lme_entry(
    height ~ age, ~ age | Subject, ox, method, "Oxboys.csv")
  nlme_ref[[paste0("oxboys_lme_ar1", sfx)]] <- lme_entry(
    height ~ age, ~ age | Subject, ox, method, "Oxboys.csv",
    correlation = corAR1(form = ~ 1 | Subject),
    corr_desc = "corAR1(form = ~ 1 | Subject), rows in Occasion order within Subject")
  nlme_ref[[paste0("oxboys_lme_varident", sfx)]] <- lme_entry(
    height ~ age, ~ age | Subject, ox, method, "Oxboys.csv",
    weights = varIdent(form = ~ 1 | Occasion), weights_desc = "varIdent(form = ~ 1 | Occasion)")
}
## R&B Table 5.9, full ML: homogeneous and heterogeneous (by sector) level-1 variance.
message("nlme: HS&B Table 5.9")
nlme_ref[["hsb_t59_homo_ml"]] <- lme_entry(
  mathach ~ sector * cses, ~ cses | school, hsb, "ML", datasets$hsb$name)
nlme_ref[["hsb_t59_hetero_ml"]] <- lme_entry(
  mathach ~ sector * cses, ~ cses | school, hsb, "ML", datasets$hsb$name,
  weights = varIdent(form = ~ 1 | sector), weights_desc = "varIdent(form = ~ 1 | sector)")
if (!is.null(nlme_ref$hsb_t59_hetero_ml$loglik)) {
  nlme_ref$hsb_t59_hetero_ml$lrt_vs_homo <-
    2 * (nlme_ref$hsb_t59_hetero_ml$loglik - nlme_ref$hsb_t59_homo_ml$loglik)
  ## R&B's log-linear parameterisation ln sigma^2 = alpha0 + alpha1 * SECTOR
  r1 <- nlme_ref$hsb_t59_hetero_ml$varident_ratios[["1"]]
  nlme_ref$hsb_t59_hetero_ml$alpha0 <- log(nlme_ref$hsb_t59_hetero_ml$sigma2)
  nlme_ref$hsb_t59_hetero_ml$alpha1 <- 2 * log(r1)
}

nlme_ref <- c(list(`_meta` = list(
  versions = versions,
  description = paste(
    "nlme::lme reference fits. criterion = -2 logLik (REML or ML); varcorr = random-effect",
    "covariance (pdMatrix * sigma^2); ar1_phi = corAR1 parameter; varIdent ratios are SD ratios",
    "relative to the first stratum. Controls: maxIter = msMaxIter = 1000, niterEM = 100,",
    "tolerance = 1e-10, msTol = 1e-12 (status says if a default-tolerance refit was needed)."),
  conventions = lme4_ref[["_meta"]]$conventions
)), nlme_ref)
write_ref(nlme_ref, file.path(out_dir, "nlme_reference.json"))

## ---------------------------------------------------------------------------------------------
## metafor
## ---------------------------------------------------------------------------------------------

## Tight convergence: rma()'s Fisher scoring stops on a tau^2 change < threshold (default 1e-5,
## which moves tau^2 in the 6th digit); rma.mv()'s nlminb gets rel.tol = 1e-12.
rma_ctrl <- list(threshold = 1e-12, maxiter = 10000)
rma_mv_ctrl <- list(rel.tol = 1e-12, iter.max = 1000, eval.max = 5000)

## Fields every metafor entry shares: the call, the coefficients with their SEs, z, CIs and covariance.
rma_common <- function(fit, data_name, call_desc) {
  list(
    call = call_desc,
    data = data_name,
    method = fit$method,
    k = fit$k,
    beta = named_list(setNames(as.numeric(fit$beta), rownames(fit$beta))),
    se = named_list(setNames(fit$se, rownames(fit$beta))),
    zval = named_list(setNames(fit$zval, rownames(fit$beta))),
    ci_lb = named_list(setNames(fit$ci.lb, rownames(fit$beta))),
    ci_ub = named_list(setNames(fit$ci.ub, rownames(fit$beta))),
    vcov = list(names = rownames(fit$beta), cov = mat(vcov(fit))),
    QE = fit$QE, QE_df = fit$k - fit$p, QEp = fit$QEp
  )
}

rma_uni_entry <- function(fit, data_name, call_desc) {
  likelihood <- fit$method %in% c("ML", "REML")
  e <- c(rma_common(fit, data_name, call_desc), list(
    tau2 = fit$tau2,
    se_tau2 = fit$se.tau2,
    I2 = fit$I2, H2 = fit$H2,
    loglik = if (likelihood) as.numeric(logLik(fit)) else NULL,
    deviance = if (likelihood) as.numeric(deviance(fit)) else NULL
  ))
  if (fit$p > 1) {
    e$QM <- fit$QM; e$QMp <- fit$QMp; e$R2 <- fit$R2
  } else {
    pr <- predict(fit)
    e$pred <- list(pred = pr$pred, se = pr$se, ci_lb = pr$ci.lb, ci_ub = pr$ci.ub,
                   pi_lb = pr$pi.lb, pi_ub = pr$pi.ub)
  }
  if (fit$method %in% c("ML", "REML", "DL")) {
    bl <- blup(fit)
    e$blup <- list(pred = I(bl$pred), se = I(bl$se), pi_lb = I(bl$pi.lb), pi_ub = I(bl$pi.ub))
  }
  e
}

meta_ref <- list()

## Teacher expectancy (R&B ch. 7): weeks capped at 3.
r85 <- rd("dat.raudenbush1985.csv")
r85$weeks_c <- pmin(r85$weeks, 3)
for (m in c("REML", "ML", "DL")) {
  fit <- rma(yi, vi, data = r85, method = m, control = rma_ctrl)
  meta_ref[[paste0("raudenbush1985_", tolower(m))]] <-
    rma_uni_entry(fit, "dat.raudenbush1985.csv", sprintf("rma(yi, vi, method = \"%s\")", m))
}
for (m in c("REML", "ML")) {
  fit <- rma(yi, vi, mods = ~ weeks_c, data = r85, method = m, control = rma_ctrl)
  meta_ref[[paste0("raudenbush1985_weeks_", tolower(m))]] <-
    rma_uni_entry(fit, "dat.raudenbush1985.csv (weeks_c = pmin(weeks, 3))",
                  sprintf("rma(yi, vi, mods = ~ weeks_c, method = \"%s\")", m))
}

## Eight schools: vi = sigma^2.
es <- rd("eight_schools.csv")
es$vi <- es$sigma^2
for (m in c("REML", "ML", "DL")) {
  fit <- rma(y, vi, data = es, method = m, control = rma_ctrl)
  meta_ref[[paste0("eight_schools_", tolower(m))]] <-
    rma_uni_entry(fit, "eight_schools.csv (vi = sigma^2)",
                  sprintf("rma(y, sigma^2, method = \"%s\")", m))
}

rma_mv_entry <- function(fit, data_name, call_desc) {
  e <- c(rma_common(fit, data_name, call_desc), list(
    loglik = as.numeric(logLik(fit)),
    deviance = as.numeric(deviance(fit))
  ))
  if (fit$withS) {
    e$sigma2 <- I(fit$sigma2); e$sigma2_names <- I(fit$s.names); e$sigma2_nlevels <- I(fit$s.nlevels)
  }
  if (fit$withG) {
    e$tau2 <- I(fit$tau2); e$rho <- I(fit$rho); e$G <- list(names = fit$g.levels.f[[1]], cov = mat(fit$G))
  }
  if (fit$p > 1 && fit$int.incl) { e$QM <- fit$QM; e$QMp <- fit$QMp }
  e
}

## Berkey 1998: bivariate, V block-diagonal from (v1i, v2i) in row order, 2 rows per trial.
bk <- rd("dat.berkey1998.csv")
stopifnot(nrow(bk) == 10, all(table(bk$trial) == 2))
blocks <- lapply(split(seq_len(nrow(bk)), factor(bk$trial, levels = unique(bk$trial))),
                 function(i) as.matrix(bk[i, c("v1i", "v2i")]))
V <- bldiag(blocks)
stopifnot(isSymmetric(unname(V)))
fit <- rma.mv(yi, V, mods = ~ outcome - 1, random = ~ outcome | trial, struct = "UN",
              data = bk, method = "REML", control = rma_mv_ctrl)
meta_ref[["berkey1998_reml"]] <- rma_mv_entry(
  fit, "dat.berkey1998.csv",
  "rma.mv(yi, V, mods = ~ outcome - 1, random = ~ outcome | trial, struct = \"UN\", method = \"REML\")")
meta_ref[["berkey1998_reml"]]$V <- mat(V)

## Konstantopoulos 2011: three-level.
k11 <- rd("dat.konstantopoulos2011.csv")
for (m in c("REML", "ML")) {
  fit <- rma.mv(yi, vi, random = ~ 1 | district/school, data = k11, method = m,
                control = rma_mv_ctrl)
  meta_ref[[paste0("konstantopoulos2011_", tolower(m))]] <- rma_mv_entry(
    fit, "dat.konstantopoulos2011.csv",
    sprintf("rma.mv(yi, vi, random = ~ 1 | district/school, method = \"%s\")", m))
}

meta_ref <- c(list(`_meta` = list(
  versions = versions,
  description = paste(
    "metafor reference fits. rma(): beta/se/tau2/se_tau2/QE/I2 (percent)/H2 as in the fit object;",
    "pred = predict(fit) incl. prediction interval pi_lb/pi_ub (intercept-only models);",
    "blup = blup(fit) per study in data row order. rma.mv(): sigma2 = variance components",
    "(names in sigma2_names), tau2/rho/G for ~ inner | outer structures.",
    "Controls: rma threshold = 1e-12, maxiter = 1e4; rma.mv nlminb rel.tol = 1e-12.")
)), meta_ref)
write_ref(meta_ref, file.path(out_dir, "metafor_reference.json"))

## ---------------------------------------------------------------------------------------------
## Timings (benchmarks reference): median of n repeats of the full lmer() call (formula to fit),
## with lme4's default control and with the tight bobyqa control used above.
## ---------------------------------------------------------------------------------------------

time_lmer <- function(formula, data, control) {
  lmer(formula, data = data, REML = TRUE, control = control)   # warm-up (not timed)
  t <- replicate(n_timing_reps,
                 system.time(lmer(formula, data = data, REML = TRUE, control = control))[["elapsed"]])
  list(median_seconds = median(t), all_seconds = I(t))
}
bench_specs <- list(
  hsb_full_reml = list(f = lme4_specs$hsb_full$f, d = hsb),
  egsingle_uncond_reml = list(f = lme4_specs$egsingle_uncond$f, d = eg),
  scotssec_reml = list(f = lme4_specs$scotssec$f, d = scots)
)
timings <- list()
for (id in names(bench_specs)) {
  message("timing: ", id)
  s <- bench_specs[[id]]
  timings[[id]] <- list(
    formula = paste(deparse(s$f, width.cutoff = 500L), collapse = " "),
    nobs = nrow(s$d),
    default_control = time_lmer(s$f, s$d, lmerControl()),
    tight_bobyqa = time_lmer(s$f, s$d, ctrl_list$bobyqa)
  )
}
timings <- c(list(`_meta` = list(
  versions = versions,
  description = paste("Wall-clock seconds for lmer(formula, data, REML = TRUE, control), median of",
                      n_timing_reps, "repeats after one untimed warm-up; default_control =",
                      "lmerControl(); tight_bobyqa = bobyqa with rhoend = 1e-10, maxfun = 1e5."),
  machine = list(nodename_omitted = TRUE, cores = parallel::detectCores(),
                 platform = R.version$platform,
                 note = "shared 2-core machine, other work running concurrently; treat as rough"),
  date = format(Sys.Date())
)), timings)
write_ref(timings, file.path(bench_dir, "reference_timings_lme4.json"))

message("done")
