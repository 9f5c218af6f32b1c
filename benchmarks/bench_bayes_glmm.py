"""Full-Bayes HGLMs (issue 24): this engine's compiled kernel beside the same model's PyMC graph, in one run.

Engines, each 4 chains x 1000 draws after 1000 tuning steps at target_accept 0.9 (this engine's default), on
the acceptance models of issue 24: cbpp (binomial, ``(1 | herd)``), Contraception (Bernoulli,
``(urban | district)``), VerbAgg (Bernoulli, 7,584 rows, ``(1 | id) + (1 | item)`` crossed, 316 x 24; read from
/work/shared/data/VerbAgg.csv, skipped when absent), a Poisson model with exposure and an observation-level
effect (595 rows, ``(1 | g) + (1 | obs)``) and a negative binomial (salamanders, ``(1 | site)``):

- ``bayeshlm``: ``fit(method="bayes")``; *cold* = a fresh process (``python -c``) whose Numba cache is a new
  empty directory (the first fit on a machine; ``--cold`` models only, cbpp by default), *new process* = a fresh
  process with the usual on-disk cache, *warm* = a second fit in the same process;
- ``pymc-graph+nutpie``: the model's PyMC graph (``model.pymc_model()``, the graph Bambi would also build for
  PyMC) compiled by nutpie's Numba backend; cold includes the compile, warm re-samples the compiled model;
- ``pymc-nuts``: the same graph sampled by PyMC's own NUTS (``pm.sample``, C backend; compile inside).

Bambi itself (PyMC NUTS and nutpie) and brms: ``--bambi-python <venv>/bin/python`` runs them after these rows
through benchmarks/peers_bambi.py, which fits every engine in new processes with the same cache states (and also
the VerbAgg-shaped, observation-level Poisson and negative-binomial models) and writes its own CSV
(benchmarks/results/bayes_peers.csv). Reported per row: wall and CPU seconds (the machine is shared: compare CPU
seconds, or rows of one run), gradient evaluations per draw (nutpie's n_steps), divergences, max R-hat and min bulk
ESS over the fixed effects, SDs, correlations and NB shape, min ESS per wall second, and the commit. Every row is
appended to ``--out`` as it finishes.

Usage::

    python benchmarks/bench_bayes_glmm.py [--skip-pymc] [--models cbpp ...] [--cold cbpp ...]
                                          [--out benchmarks/results/bayes_glmm.csv]
                                          [--bambi-python /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SETUP = """
import warnings
from pathlib import Path
import numpy as np, pandas as pd, bayeshlm as bh
warnings.simplefilter("ignore")
REFERENCE = Path("tests/reference/glmm")
VERBAGG = Path("/work/shared/data/VerbAgg.csv")

def model(name):
    if name == "cbpp":
        return bh.HLM("cbind(incidence, size - incidence) ~ period + (1 | herd)", bh.datasets.load("cbpp"),
                      family="binomial")
    if name == "contraception_urban":
        data = bh.datasets.load("contraception")
        data["use"] = (data["use"] == "Y").astype(int)
        data["livch"] = pd.Categorical(data["livch"], categories=["0", "1", "2", "3+"])
        return bh.HLM("use ~ age + I(age**2) + urban + livch + (urban | district)", data, family="bernoulli")
    if name == "verbagg":
        data = pd.read_csv(VERBAGG, dtype={"id": str, "item": str})
        data["r2"] = (data["r2"] == "Y").astype(int)
        return bh.HLM("r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", data, family="bernoulli")
    if name == "poisson_olre":
        data = pd.read_csv(REFERENCE / "poisson_exposure.csv")
        data["obs"] = [f"o{i:03d}" for i in range(len(data))]  # one level per row: observation-level effect
        return bh.HLM("y ~ x + (1 | g) + (1 | obs)", data, family="poisson", exposure="years")
    data = pd.read_csv(REFERENCE / "salamanders.csv")
    data["mined"] = pd.Categorical(data["mined"], categories=["yes", "no"])
    return bh.HLM("count ~ cover + mined + (1 | site)", data, family="negative_binomial")

def var_names(m):
    names = ["beta", *(f"tau_{f}" for f in m.design.factor_names), *(f"corr_{f}" for f in m.design.factor_names)]
    return names + (["shape"] if m.outcome.family.name == "negative_binomial" else [])
"""
MODELS = ("cbpp", "contraception_urban", "verbagg", "poisson_olre", "nbinom")
FIELDS = ["model", "engine", "state", "seconds", "cpu_seconds", "gradients_per_draw", "divergences", "max_rhat",
          "min_ess_bulk", "min_ess_per_s", "commit"]


def summarise(tree, var_names, seconds, cpu_seconds):
    import arviz as az
    import numpy as np

    names = [v for v in var_names if v in tree["posterior"]]
    ess = az.ess(tree, var_names=names, method="bulk")
    rhat = az.rhat(tree, var_names=names)
    values = [np.asarray(ess[v].values, float) for v in names]
    rhats = [np.asarray(rhat[v].values, float) for v in names]
    # the unit diagonal of a correlation Cholesky factor is constant: no ESS
    low = min(float(np.nanmin(np.where(np.isfinite(v) & (v < 1e6), v, np.nan))) for v in values)
    stats = tree["sample_stats"]
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2),
            "gradients_per_draw": round(float(stats["n_steps"].mean()), 2),
            "divergences": int(stats["diverging"].sum()),
            "max_rhat": round(max(float(np.nanmax(r)) for r in rhats), 4), "min_ess_bulk": round(low),
            "min_ess_per_s": round(low / seconds, 1)}


def cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def draws_digest(tree, names=None) -> str:
    """SHA-256 (first 16 hex digits) of the posterior draws, variable by variable in name order (``names``: only
    these): equal digests, equal draws."""
    import hashlib

    import numpy as np

    posterior = tree["posterior"]
    digest = hashlib.sha256()
    for name in sorted(names or posterior.data_vars):
        digest.update(np.ascontiguousarray(posterior[name].values).tobytes())
    return digest.hexdigest()[:16]


def records_from(code: str, tree, timeout: float, **env: str) -> list[dict]:
    """The JSON records (the printed lines that start with "{") of ``code`` run by a new Python process on the
    checkout ``tree`` (its PYTHONPATH and working directory; ``env``: more environment variables); RuntimeError
    with the end of its stderr if it fails."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=tree,
                          env=dict(os.environ, PYTHONPATH=str(tree), **env))
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return [json.loads(line) for line in done.stdout.strip().splitlines() if line.startswith("{")]


def interleaved_microseconds(callbacks: dict, n_dim: int, points: list, data_address: int, repeats: int,
                             blocks: int = 6) -> dict[str, list[float]]:
    """CPU microseconds per call of compiled log densities + gradients (``callbacks``: label -> ctypes function with
    nutpie's signature) reading the buffer at ``data_address``: each of ``points`` in turn, ``repeats`` times over,
    the labels taking turns ``blocks`` times so that a change of load hits them alike (after one untimed pass)."""
    import ctypes

    import numpy as np

    pointer = ctypes.POINTER(ctypes.c_double)
    xs = [np.ascontiguousarray(point, dtype=float) for point in points]
    at = [x.ctypes.data_as(pointer) for x in xs]
    grad, value = np.empty(n_dim), np.empty(1)
    rest = (grad.ctypes.data_as(pointer), value.ctypes.data_as(pointer), ctypes.c_void_p(data_address))
    out: dict[str, list[float]] = {label: [] for label in callbacks}
    for logp in callbacks.values():
        for x in at:
            logp(n_dim, x, *rest)
    for _ in range(blocks):
        for label, logp in callbacks.items():
            start = time.process_time()
            for _ in range(repeats):
                for x in at:
                    logp(n_dim, x, *rest)
            out[label].append((time.process_time() - start) / (repeats * len(at)) * 1e6)
    return out


def print_kernel_speed(name: str, title: str | None = None) -> None:
    """Print the CPU microseconds per log density + gradient of the C extension and of Numba's callbacks for the
    HGLM kernel of SETUP's model ``name`` (every factor non-centred, no Laplace start; 20 starting points, 6
    interleaved blocks of 200 passes, median per block)."""
    import numpy as np

    from bayeshlm.bayes.glmm import build_kernel, resolve_glmm_priors
    from bayeshlm.bayes.glmm_kernel import extension_callbacks, numba_callbacks

    namespace: dict = {}
    exec(SETUP, namespace)  # noqa: S102 -- our own constant code
    model = namespace["model"](name)
    priors, shape = resolve_glmm_priors(model.design, model.outcome, None)
    built = build_kernel(model.design, model.outcome, priors, shape,
                         {f.name: "non-centred" for f in model.design.factors}, None)
    starts = [built.unconstrained_start(seed) for seed in range(20)]
    micro = interleaved_microseconds({"extension": extension_callbacks()[0].ctypes,
                                      "numba": numba_callbacks()[0].ctypes},
                                     built.n_dim, starts, built.buffer.ctypes.data, 200)
    print(f"{title or name}: {built.n_rows} rows, {built.n_dim} coordinates: "
          + ", ".join(f"{label} {np.median(v):.1f} us" for label, v in micro.items())
          + f" per log density + gradient; load {os.getloadavg()[0]:.1f}")


def bayeshlm_fresh_process(name: str, cache_dir: str | None) -> dict:
    code = SETUP + BENCH_HELPERS + f"""
import json
m = model({name!r})
t, c = time.perf_counter(), cpu()
fit = m.fit(method="bayes", random_seed=1)
print(json.dumps(summarise(fit.posterior, var_names(m), time.perf_counter() - t, cpu() - c)))
"""
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=1500)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bayes_glmm.csv"))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--cold", nargs="*", default=["cbpp"], choices=MODELS,
                        help="models also fitted in a fresh process with an empty Numba cache")
    parser.add_argument("--skip-pymc", action="store_true")
    parser.add_argument("--bambi-python", help="also run Bambi and brms via benchmarks/peers_bambi.py")
    args = parser.parse_args()
    namespace: dict = {}
    exec(SETUP, namespace)  # noqa: S102 -- our own constant code, shared with the fresh processes
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    out = Path(args.out)
    new = not out.exists()
    with out.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if new:
            writer.writeheader()

        def write(model, engine, state, row):
            writer.writerow({"model": model, "engine": engine, "state": state, **row, "commit": commit})
            handle.flush()
            print(model, engine, state, row, flush=True)

        for name in args.models:
            if name == "verbagg" and not namespace["VERBAGG"].exists():
                print("verbagg skipped:", namespace["VERBAGG"], "is missing", flush=True)
                continue
            if name in args.cold:
                with tempfile.TemporaryDirectory() as empty:
                    write(name, "bayeshlm", "cold (empty Numba cache)", bayeshlm_fresh_process(name, empty))
            write(name, "bayeshlm", "new process, disk cache", bayeshlm_fresh_process(name, None))
            model = namespace["model"](name)
            names = namespace["var_names"](model)
            warnings.simplefilter("ignore")
            model.fit(method="bayes", random_seed=1)
            started, cpu_started = time.perf_counter(), cpu()
            fit = model.fit(method="bayes", random_seed=2)
            write(name, "bayeshlm", "warm", summarise(fit.posterior, names, time.perf_counter() - started,
                                                      cpu() - cpu_started))
            if args.skip_pymc:
                continue
            import nutpie
            import pymc as pm

            graph = model.pymc_model()
            started, cpu_started = time.perf_counter(), cpu()
            compiled = nutpie.compile_pymc_model(graph, backend="numba")
            tree = nutpie.sample(compiled, draws=1000, tune=1000, chains=4, seed=1, progress_bar=False,
                                 target_accept=0.9)
            write(name, "pymc-graph+nutpie", "cold (compile included)",
                  summarise(tree, names, time.perf_counter() - started, cpu() - cpu_started))
            started, cpu_started = time.perf_counter(), cpu()
            tree = nutpie.sample(compiled, draws=1000, tune=1000, chains=4, seed=2, progress_bar=False,
                                 target_accept=0.9)
            write(name, "pymc-graph+nutpie", "warm",
                  summarise(tree, names, time.perf_counter() - started, cpu() - cpu_started))
            started, cpu_started = time.perf_counter(), cpu()
            with graph:
                tree = pm.sample(draws=1000, tune=1000, chains=4, random_seed=1, progressbar=False,
                                 nuts_sampler="pymc", nuts={"target_accept": 0.9},
                                 compute_convergence_checks=False)
            write(name, "pymc-nuts", "cold (compile included)",
                  summarise(tree, names, time.perf_counter() - started, cpu() - cpu_started))
    if args.bambi_python:
        from peers_bambi import main as peers
        peers(["--bambi-python", args.bambi_python, "--models", *args.models])


BENCH_HELPERS = "import time\n" + "".join(inspect.getsource(f) for f in (summarise, cpu, draws_digest))


if __name__ == "__main__":
    main()
