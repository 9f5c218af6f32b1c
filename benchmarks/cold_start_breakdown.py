"""Where the time of a first Bayesian fit goes (issues 24 and 27): one HS&B fit (or one HGLM fit) in a new process,
stage by stage.

Each stage is timed in CPU seconds of this process (``resource.getrusage``: user + system, all threads, so
sampling counts every chain) and in wall seconds. CPU seconds do not depend on how busy the shared machine is;
wall seconds do. The stages, in the order a fit meets them:

- ``import numba`` / ``bayeshlm`` / the Bayesian engine / nutpie's sampler core: each on top of the ones before it
  (what ``import bayeshlm`` plus a first Bayes fit pull in; since the fit drives ``nutpie._lib`` itself, it no
  longer imports PyMC, PyTensor, nutpie's Python package or arviz);
- ``data + design``: loading HS&B and ``bh.HLM(...)``;
- ``model build``: :func:`bayeshlm.bayes.sampled_model` (priors, outcome units, the PyMC graph, the chain's
  sufficient statistics and the kernel's packed buffer);
- ``kernel compile/load``: the C callbacks (compiled with an empty Numba cache, loaded from it when warm);
- ``sampling``: nutpie's 4 chains x 1000 draws after 1000 tuning steps;
- ``fit setup``: the fit call's own work between those stages (options, seed);
- ``post-processing``: the rest of the fit call (naming the draws, group effects, units, diagnostics, result).

``--model cbpp`` times the binomial HGLM ``cbind(incidence, size - incidence) ~ period + (1 | herd)`` instead, and
``--model bernoulli50k`` 50,000 simulated Bernoulli rows in 1,000 groups, ``y ~ x + (1 | g)`` (whose Laplace fit
finds the conditional modes by the likelihood engine's compiled per-group Newton iteration), with the stages
``Laplace/ML reference fit`` (the likelihood engine's fit that sets the start and the parameterisation),
``kernel buffer`` (:func:`bayeshlm.bayes.glmm.build_kernel`), ``kernel compile/load`` (the HGLM callbacks:
the ahead-of-time extension, or Numba's compiled or loaded from its cache), sampling and the rest. It also lists
the functions Numba compiled in the process, with their wall seconds (top-level ``numba:compile`` events; a C
callback loaded from Numba's cache raises none).

Usage::

    python benchmarks/cold_start_breakdown.py               # cold (new empty caches), then warm, new processes
    python benchmarks/cold_start_breakdown.py --state warm  # the default caches as they are
    python benchmarks/cold_start_breakdown.py --model cbpp  # an HGLM

Each state runs in its own new process; the cold run points ``NUMBA_CACHE_DIR`` and PyTensor's
``base_compiledir`` at a new empty directory, and the warm run reuses that directory.

``--kernel-speed`` instead compares, in this process, the CPU microseconds per log density + gradient of the
HGLM kernel's ahead-of-time extension and of its Numba callbacks (the same computation): cbpp and 50,000
Bernoulli and negative binomial rows, both called through ctypes at the same 20 points, in 6 interleaved blocks.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

STAGE_RUN = r"""
import json, resource, sys, time
import warnings
warnings.simplefilter("ignore")

def clock():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, time.perf_counter()

stages = []
last = clock()

def mark(name):
    global last
    now = clock()
    stages.append((name, now[0] - last[0], now[1] - last[1]))
    last = now

import numba; mark("import numba")
from numba.core import event

compiled, depth = {}, [0]

class TopLevelCompiles(event.Listener):
    # wall seconds of every outermost numba:compile event, by function name

    def on_start(self, ev):
        depth[0] += 1
        if depth[0] == 1:
            self.began = time.perf_counter()

    def on_end(self, ev):
        depth[0] -= 1
        if depth[0] == 0:
            dispatcher = ev.data["dispatcher"]
            name = getattr(getattr(dispatcher, "py_func", dispatcher), "__qualname__", str(dispatcher))
            compiled[name] = compiled.get(name, 0.0) + time.perf_counter() - self.began

event.register("numba:compile", TopLevelCompiles())
import bayeshlm as bh; mark("import bayeshlm")
import bayeshlm.bayes.gaussian as bayes
import bayeshlm.bayes.sampling as sampling
mark("import the Bayesian engine")
from bayeshlm.bayes import nuts
nuts.core(); mark("load nutpie's sampler core (nutpie._lib)")

def timed(module, name, label):
    inner = getattr(module, name)
    def wrapper(*args, **kwargs):
        mark("fit setup (options, between stages)")
        out = inner(*args, **kwargs)
        mark(label)
        return out
    setattr(module, name, wrapper)
"""

MODEL_STAGES = {"hsb": r"""
timed(bayes, "sampled_model", "model build (graph, statistics, kernel buffer)")
timed(sampling, "kernel_nutpie_model", "kernel compile/load")
timed(sampling, "sample_nutpie", "sampling (4 x 1000 + 1000 tuning)")
df = bh.datasets.load("hsb")
model = bh.HLM("mathach ~ meanses*cses + sector*cses + (cses | school)", df)
mark("data + design")
fit = model.fit("bayes", draws=1000, tune=1000, chains=4, random_seed=1)
mark("post-processing (names, group effects, units, diagnostics)")
""", "cbpp": r"""
import bayeshlm.bayes.glmm as glmm
import bayeshlm.bayes.glmm_kernel as glmm_kernel
mark("import bayeshlm.bayes.glmm (the HGLM engine)")
timed(glmm, "laplace_start", "Laplace/ML reference fit")
timed(glmm, "build_kernel", "kernel buffer")
timed(glmm_kernel, "nutpie_model", "kernel compile/load")
timed(sampling, "sample_nutpie", "sampling (4 x 1000 + 1000 tuning)")
df = bh.datasets.load("cbpp")
model = bh.HLM("cbind(incidence, size - incidence) ~ period + (1 | herd)", df, family="binomial")
mark("data + design")
fit = model.fit(method="bayes", random_seed=1)
mark("post-processing (names, group effects, units, diagnostics)")
"""}
# 50,000 Bernoulli rows in 1,000 groups: the Laplace fit's conditional modes take the compiled per-group Newton
# path (likelihood/glmm_kernel.py, from 50,000 rows); the binary x merges the rows to 2,000 binomial ones
MODEL_STAGES["bernoulli50k"] = MODEL_STAGES["cbpp"].replace(
    """df = bh.datasets.load("cbpp")
model = bh.HLM("cbind(incidence, size - incidence) ~ period + (1 | herd)", df, family="binomial")""",
    """import numpy as np, pandas as pd
rng = np.random.default_rng(1)
g, x = np.repeat(np.arange(1000), 50), rng.integers(0, 2, 50_000)
eta = -0.5 + 0.7 * x + rng.normal(0.0, 0.8, 1000)[g]
df = pd.DataFrame({"y": rng.binomial(1, 1.0 / (1.0 + np.exp(-eta))), "x": x, "g": g})
model = bh.HLM("y ~ x + (1 | g)", df, family="bernoulli")""")

REPORT = r"""
merged = {}
for name, cpu, wall in stages:
    a, b = merged.get(name, (0.0, 0.0))
    merged[name] = (a + cpu, b + wall)
print(json.dumps({"stages": merged, "min_ess_bulk": fit.diagnostics["min_ess_bulk"],
                  "compile_seconds": fit.sampler["compile_seconds"], "log_density": fit.sampler["log_density"],
                  "numba": sorted(compiled.items(), key=lambda item: -item[1])}))
"""


def run_state(state: str, cache: str | None, model: str = "hsb") -> dict:
    """One fit in a new process; adds the whole process's wall and CPU seconds (interpreter start included)."""
    env = dict(os.environ)
    if cache is not None:
        env["NUMBA_CACHE_DIR"] = cache
        env["PYTENSOR_FLAGS"] = f"base_compiledir={cache}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", STAGE_RUN + MODEL_STAGES[model] + REPORT], capture_output=True,
                          text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return record | {"state": state, "model": model, "process_wall_s": wall, "process_cpu_s": cpu,
                     "load": os.getloadavg()[0]}


def show(record: dict) -> None:
    print(f"\n{record['model']} {record['state']}: whole process {record['process_cpu_s']:.2f} CPU s, "
          f"{record['process_wall_s']:.2f} s wall, load {record['load']:.1f}; log density: {record['log_density']}; "
          f"min bulk ESS {record['min_ess_bulk']:.0f}")
    print(f"  {'stage':50s} {'CPU s':>8s} {'wall s':>8s}")
    total_cpu = total_wall = 0.0
    for name, (cpu, wall) in record["stages"].items():
        print(f"  {name:50s} {cpu:8.2f} {wall:8.2f}")
        total_cpu, total_wall = total_cpu + cpu, total_wall + wall
    print(f"  {'total (in process)':50s} {total_cpu:8.2f} {total_wall:8.2f}")
    print("  Numba compiles (wall s): "
          + (", ".join(f"{name} {seconds:.2f}" for name, seconds in record["numba"]) or "none"))


def append_csv(path: str, label: str, record: dict) -> None:
    """One row per stage plus a row for the whole process, tagged with ``label`` (e.g. the commit)."""
    rows = [(name, cpu, wall) for name, (cpu, wall) in record["stages"].items()]
    rows.append(("whole process", record["process_cpu_s"], record["process_wall_s"]))
    new = not os.path.exists(path)
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["label", "model", "state", "stage", "cpu_s", "wall_s", "load", "log_density",
                             "min_ess_bulk"])
        for name, cpu, wall in rows:
            writer.writerow([label, record["model"], record["state"], name, round(cpu, 3), round(wall, 3),
                             round(record["load"], 2), record["log_density"], round(record["min_ess_bulk"], 1)])


def kernel_speed() -> None:
    """CPU microseconds per log-density call, extension vs Numba (median of 6 interleaved blocks)."""
    import numpy as np
    import pandas as pd
    from bench_bayes_glmm import interleaved_microseconds

    import bayeshlm as bh
    from bayeshlm.bayes.glmm import build_kernel, resolve_glmm_priors
    from bayeshlm.bayes.glmm_kernel import extension_callbacks, numba_callbacks

    rng = np.random.default_rng(1)
    g, x = np.repeat(np.arange(1000), 50), rng.normal(size=50_000)
    eta = -0.5 + 0.7 * x + rng.normal(0.0, 0.8, 1000)[g]
    rows = pd.DataFrame({"y": rng.binomial(1, 1.0 / (1.0 + np.exp(-eta))), "x": x, "g": g})
    models = {"cbpp": bh.HLM("cbind(incidence, size - incidence) ~ period + (1 | herd)", bh.datasets.load("cbpp"),
                             family="binomial"),
              "bernoulli, 50,000 rows, (1 | g)": bh.HLM("y ~ x + (1 | g)", rows, family="bernoulli"),
              "negative binomial, 50,000 rows, (x | g)": bh.HLM("y ~ x + (x | g)", rows.assign(
                  y=rng.poisson(np.exp(eta))), family="negative_binomial")}
    for name, model in models.items():
        priors, shape = resolve_glmm_priors(model.design, model.outcome, None)
        kernel = build_kernel(model.design, model.outcome, priors, shape,
                              {f.name: "non-centred" for f in model.design.factors}, None)
        starts = [kernel.unconstrained_start(seed) for seed in range(20)]
        micro = interleaved_microseconds({"extension": extension_callbacks()[0].ctypes,
                                          "numba": numba_callbacks()[0].ctypes},
                                         kernel.n_dim, starts, kernel.buffer.ctypes.data,
                                         max(1, 200_000 // kernel.n_rows))
        ours, theirs = np.median(micro["extension"]), np.median(micro["numba"])
        print(f"{name}: {kernel.n_rows} rows, {kernel.n_dim} coordinates: extension {ours:.1f} us, Numba "
              f"{theirs:.1f} us per call (Numba / extension {theirs / ours:.2f}); load {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", choices=("cold", "warm", "both"), default="both")
    parser.add_argument("--model", choices=tuple(MODEL_STAGES), default="hsb")
    parser.add_argument("--csv", help="append the stages to this CSV file")
    parser.add_argument("--label", default="", help="the CSV rows' label (e.g. the commit)")
    parser.add_argument("--kernel-speed", action="store_true", help="extension vs Numba per call, in this process")
    args = parser.parse_args()
    if args.kernel_speed:
        kernel_speed()
        return
    if args.state == "warm":
        records = [run_state("warm (default caches)", None, args.model)]
    else:
        with tempfile.TemporaryDirectory() as cache:
            records = [run_state("cold", cache, args.model)]
            if args.state == "both":
                records.append(run_state("warm", cache, args.model))
    for record in records:
        show(record)
        if args.csv:
            append_csv(args.csv, args.label, record)


if __name__ == "__main__":
    main()
