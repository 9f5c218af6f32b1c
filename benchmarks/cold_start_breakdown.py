"""Where the time of a first Bayesian fit goes (issue 27): one HS&B fit in a new process, stage by stage.

Each stage is timed in CPU seconds of this process (``resource.getrusage``: user + system, all threads, so
sampling counts every chain) and in wall seconds. CPU seconds do not depend on how busy the shared machine is;
wall seconds do. The stages, in the order a fit meets them:

- ``import numba`` / ``pytensor`` / ``pymc`` / ``nutpie`` / ``arviz`` / ``bayeshlm``: each import on top of the
  ones before it (what ``import bayeshlm`` plus a first Bayes fit pull in);
- ``data + design``: loading HS&B and ``bh.HLM(...)``;
- ``model build``: :func:`bayeshlm.bayes.sampled_model` (priors, outcome units, the PyMC graph, the chain's
  sufficient statistics and the kernel's packed buffer);
- ``kernel compile/load``: the C callbacks (compiled with an empty Numba cache, loaded from it when warm);
- ``sampling``: nutpie's 4 chains x 1000 draws after 1000 tuning steps;
- ``fit setup``: the fit call's own work between those stages (options, seed);
- ``post-processing``: the rest of the fit call (naming the draws, group effects, units, diagnostics, result).

Usage::

    python benchmarks/cold_start_breakdown.py               # cold (new empty caches), then warm, new processes
    python benchmarks/cold_start_breakdown.py --state warm  # the default caches as they are

Each state runs in its own new process; the cold run points ``NUMBA_CACHE_DIR`` and PyTensor's
``base_compiledir`` at a new empty directory, and the warm run reuses that directory.
"""

from __future__ import annotations

import argparse
import json
import os
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
import pytensor; mark("import pytensor")
import pymc; mark("import pymc")
import nutpie; mark("import nutpie")
import arviz; mark("import arviz")
import bayeshlm as bh; mark("import bayeshlm (and the bayes engine)")
import bayeshlm.bayes as bayes
import bayeshlm.bayes.sampling as sampling

def timed(module, name, label):
    inner = getattr(module, name)
    def wrapper(*args, **kwargs):
        mark("fit setup (options, between stages)")
        out = inner(*args, **kwargs)
        mark(label)
        return out
    setattr(module, name, wrapper)

timed(bayes, "sampled_model", "model build (graph, statistics, kernel buffer)")
timed(sampling, "kernel_nutpie_model", "kernel compile/load")
timed(sampling, "sample_nutpie", "sampling (4 x 1000 + 1000 tuning)")
df = bh.datasets.load("hsb")
model = bh.HLM("mathach ~ meanses*cses + sector*cses + (cses | school)", df)
mark("data + design")
fit = model.fit("bayes", draws=1000, tune=1000, chains=4, random_seed=1)
mark("post-processing (names, group effects, units, diagnostics)")
merged = {}
for name, cpu, wall in stages:
    a, b = merged.get(name, (0.0, 0.0))
    merged[name] = (a + cpu, b + wall)
print(json.dumps({"stages": merged, "min_ess_bulk": fit.diagnostics["min_ess_bulk"],
                  "compile_seconds": fit.sampler["compile_seconds"]}))
"""


def run_state(state: str, cache: str | None) -> dict:
    env = dict(os.environ)
    if cache is not None:
        env["NUMBA_CACHE_DIR"] = cache
        env["PYTENSOR_FLAGS"] = f"base_compiledir={cache}"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", STAGE_RUN], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    return record | {"state": state, "process_wall_s": wall}


def show(record: dict) -> None:
    print(f"\n{record['state']}: whole process {record['process_wall_s']:.2f} s wall, load {os.getloadavg()[0]:.1f}; "
          f"min bulk ESS {record['min_ess_bulk']:.0f}")
    print(f"  {'stage':50s} {'CPU s':>8s} {'wall s':>8s}")
    total_cpu = total_wall = 0.0
    for name, (cpu, wall) in record["stages"].items():
        print(f"  {name:50s} {cpu:8.2f} {wall:8.2f}")
        total_cpu, total_wall = total_cpu + cpu, total_wall + wall
    print(f"  {'total (in process)':50s} {total_cpu:8.2f} {total_wall:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", choices=("cold", "warm", "both"), default="both")
    args = parser.parse_args()
    if args.state == "warm":
        show(run_state("warm (default caches)", None))
        return
    with tempfile.TemporaryDirectory() as cache:
        show(run_state("cold", cache))
        if args.state == "both":
            show(run_state("warm", cache))


if __name__ == "__main__":
    main()
