## peers_brms.R -- brms as a peer of the Bayesian HGLM engine (issue 24), run by benchmarks/peers_bambi.py.
##
##   Rscript benchmarks/peers_brms.R <cbpp|contraception_urban> [draws] [chains]     (from the repository root)
##
## Fits the model with brms's default priors and sampler settings (rstan backend, adapt_delta 0.8), 4 chains x
## <draws> after <draws> warmup, seed 1, on up to 2 cores; then update(fit, seed = 2) in the same process, which
## reuses the compiled Stan model. brms compiles its Stan model in every new R process, so the first fit is the
## cold (and also the warm new-process) state and the update is the refit. Prints a line {"mark": "start"} as
## each fit starts and one JSON line when it ends: wall seconds of brm()/update(), load time of brms,
## divergences, and max R-hat / min bulk ESS over the hyperparameters (b_, sd_, cor_ draws). CPU seconds are
## measured by peers_bambi.py over the whole process session: rstan runs the chains in socket-cluster worker
## processes that R does not wait for, so R's own proc.time() would leave them out.
suppressPackageStartupMessages(library(posterior))
loaded <- proc.time()[["elapsed"]]
suppressPackageStartupMessages(library(brms))
loaded <- proc.time()[["elapsed"]] - loaded
rstan::rstan_options(boost_lib = "/usr/include", auto_write = FALSE)

args <- commandArgs(trailingOnly = TRUE)
which_model <- args[1]
draws <- if (length(args) > 1) as.integer(args[2]) else 1000L
chains <- if (length(args) > 2) as.integer(args[3]) else 4L
data_dir <- "bayeshlm/datasets/data"

if (which_model == "cbpp") {
  d <- read.csv(file.path(data_dir, "cbpp.csv"), colClasses = c(herd = "factor", period = "factor"))
  formula <- incidence | trials(size) ~ period + (1 | herd)
  family <- binomial()
} else if (which_model == "contraception_urban") {
  d <- read.csv(file.path(data_dir, "Contraception.csv"), colClasses = c(district = "factor", urban = "factor"))
  d$use <- as.integer(d$use == "Y")
  d$livch <- factor(d$livch, levels = c("0", "1", "2", "3+"))
  formula <- use ~ age + I(age^2) + urban + livch + (urban | district)
  family <- bernoulli()
} else stop("model: cbpp or contraception_urban")

report <- function(fit, started, extra = "") {
  wall <- proc.time()[["elapsed"]] - started
  hyper <- summarise_draws(subset_draws(as_draws_array(fit), variable = "^(b_|sd_|cor_|shape)", regex = TRUE),
                           "rhat", "ess_bulk")
  np <- nuts_params(fit)
  cat(sprintf('{"wall_s": %.4f, "divergences": %d, "max_rhat": %.5f, "min_ess_bulk": %.2f%s}\n',
              wall, as.integer(sum(np$Value[np$Parameter == "divergent__"])),
              max(hyper$rhat, na.rm = TRUE), min(hyper$ess_bulk, na.rm = TRUE), extra))
  flush(stdout())
}

start <- function() {
  cat('{"mark": "start"}\n')
  flush(stdout())
  proc.time()[["elapsed"]]
}

started <- start()
fit <- brm(formula, data = d, family = family, chains = chains, cores = min(chains, 2L), iter = 2L * draws,
           warmup = draws, seed = 1, refresh = 0, silent = 2, backend = "rstan")
report(fit, started, sprintf(', "import_s": %.4f', loaded))
started <- start()
refit <- update(fit, seed = 2, refresh = 0, silent = 2)
report(refit, started)
