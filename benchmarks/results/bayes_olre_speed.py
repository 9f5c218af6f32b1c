"""Runs for benchmarks/results/bayes_olre_speed.md (issue 24: the per-gradient cost of the C HGLM kernel on the
observation-level Poisson model, ``y ~ x + (1 | g) + (1 | obs)`` with exposure, 595 rows, 639 coordinates).

``kernel``: CPU microseconds per log density + gradient of the C extension through ctypes, for the kernel a
default ``fit(method="bayes")`` builds (its conditional centring, shift and partial centring included: the fit is
stopped where it would call nutpie) of each of benchmarks/peers_bambi.py's MODELS named, at 20 jittered
starting points, median of 6 blocks, in this process (run it with ``PYTHONPATH`` = a tree). One JSON line per
model.

``compare``: ``kernel`` in new processes with ``OPENBLAS_NUM_THREADS=1`` (OpenBLAS's spinning threads otherwise add
their CPU time to the process's), the trees alternating round by round (``--rounds``), so that old and new code see
the same machine load; the median over rounds per model and tree, and new / old.

``fits``: per tree, one new process that builds ``poisson_olre`` and fits it with default settings (4 chains x
1,000 draws after 1,000 tuning steps) with each seed in turn, refitting the same model object; the trees
alternating. Per fit: CPU seconds (process, nutpie's threads included), gradients per draw, divergences, max R-hat
and min bulk ESS over the hyperparameters (bench_bayes_glmm.summarise), and a hash of every posterior draw.

Usage::

    python benchmarks/results/bayes_olre_speed.py compare --trees old=/tmp/olre2-base new=/work/wt/olre2
    python benchmarks/results/bayes_olre_speed.py fits --trees old=/tmp/olre2-base new=/work/wt/olre2 --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_bayes_glmm import BENCH_HELPERS, SETUP, interleaved_microseconds, records_from  # noqa: E402

KERNEL_MODELS = ("poisson_olre", "cbpp", "nbinom", "contraception_urban", "verbagg")


def compiled_kernel(name: str):
    """The kernel (bayes.nuts.CallbackModel) a default fit of peers_bambi.MODELS[name] hands to nutpie."""
    import warnings

    from peers_bambi import DATA, MODELS

    import bayeshlm as bh
    from bayeshlm.bayes import sampling

    warnings.simplefilter("ignore")
    case = MODELS[name]
    model = bh.HLM(case.ours, DATA[case.data](), **case.ours_options)
    caught = {}

    def capture(compiled, **_):
        caught["model"] = compiled
        raise StopIteration

    sampling.sample_nutpie, original = capture, sampling.sample_nutpie
    try:
        model.fit(method="bayes", draws=20, tune=20, chains=1, random_seed=1)
    except StopIteration:
        pass
    finally:
        sampling.sample_nutpie = original
    return caught["model"]


def kernel(names: list[str]) -> None:
    from bayeshlm.bayes import _glmm_kernel
    from bayeshlm.bayes.glmm_kernel import extension_callbacks

    for name in names:
        compiled = compiled_kernel(name)
        starts = [compiled.start(seed) for seed in range(20)]
        blocks = interleaved_microseconds({"extension": extension_callbacks()[0].ctypes}, compiled.n_dim, starts,
                                          compiled.data_address, 150)["extension"]
        print(json.dumps({"model": name, "n_dim": compiled.n_dim, "us": round(statistics.median(blocks), 3),
                          "load_1m": round(os.getloadavg()[0], 2), "extension": _glmm_kernel.__file__}), flush=True)


def compare(args) -> None:
    trees = dict(item.split("=", 1) for item in args.trees)
    results: dict = {}
    for round_ in range(args.rounds):
        for tree, path in (trees.items() if round_ % 2 == 0 else reversed(trees.items())):
            env = dict(os.environ, PYTHONPATH=path, OPENBLAS_NUM_THREADS="1")  # no spinning BLAS threads
            done = subprocess.run([sys.executable, __file__, "kernel", "--models", *args.models],
                                  capture_output=True, text=True, env=env, cwd=path, timeout=1800)
            if done.returncode:
                raise RuntimeError(done.stderr[-3000:])
            for line in done.stdout.splitlines():
                row = json.loads(line)
                results.setdefault(row["model"], {}).setdefault(tree, []).append(row["us"])
                print(json.dumps({"round": round_, "tree": tree, **row}), flush=True)
    old, new = list(trees)
    for name, by_tree in results.items():
        medians = {tree: statistics.median(values) for tree, values in by_tree.items()}
        print(f"{name}: " + ", ".join(f"{tree} {medians[tree]:.2f} us ({min(by_tree[tree]):.2f}-"
                                      f"{max(by_tree[tree]):.2f})" for tree in trees)
              + f"; {new}/{old} {medians[new] / medians[old]:.3f}", flush=True)


def one_process(path: str, seeds: list[int]) -> list[dict]:
    """Fit poisson_olre with each seed in turn in one new process (the first fit warm, later ones refits)."""
    code = SETUP + BENCH_HELPERS + f"""
import json, os
m = model("poisson_olre")
for seed in {seeds!r}:
    t, c = time.perf_counter(), cpu()
    fit = m.fit(method="bayes", random_seed=seed)
    out = summarise(fit.posterior, var_names(m), time.perf_counter() - t, cpu() - c)
    out |= {{"seed": seed, "draws_hash": draws_digest(fit.posterior), "load_1m": round(os.getloadavg()[0], 2)}}
    print(json.dumps(out), flush=True)
"""
    return records_from(code, path, 1800)


def fits(args) -> None:
    trees = dict(item.split("=", 1) for item in args.trees)
    for round_ in range(args.rounds):
        for tree, path in (trees.items() if round_ % 2 == 0 else reversed(trees.items())):
            for row in one_process(path, args.seeds):
                row |= {"tree": tree, "ess_per_cpu_s": round(row["min_ess_bulk"] / row["cpu_seconds"], 1)}
                print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    timing = sub.add_parser("kernel")
    timing.add_argument("--models", nargs="+", default=list(KERNEL_MODELS))
    both = sub.add_parser("compare")
    both.add_argument("--trees", nargs=2, required=True, help="old=path new=path, worktrees with built extensions")
    both.add_argument("--models", nargs="+", default=list(KERNEL_MODELS))
    both.add_argument("--rounds", type=int, default=4)
    run = sub.add_parser("fits")
    run.add_argument("--trees", nargs=2, required=True)
    run.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    run.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    {"kernel": lambda: kernel(args.models), "compare": lambda: compare(args), "fits": lambda: fits(args)}[args.what]()


if __name__ == "__main__":
    main()
