"""Bambi (PyMC NUTS, nutpie) and brms beside this engine on the Bayesian acceptance models, one run (issues 24, 27).

Each engine fits each model in new processes, 4 chains x 1000 draws after 1000 tuning steps, seed 1 (refit: seed
2), with its own default priors and sampler settings (this engine: target_accept 0.9 for HGLMs; Bambi: PyMC's
and nutpie's 0.8). Cache states, the same for every engine:

- ``cold``: a new process whose PyTensor ``base_compiledir`` and Numba cache are a new empty directory;
- ``warm``: a new process that finds the caches the cold process has just filled;
- ``refit``: a second ``fit`` of the same model object in the warm process.

Timed (``wall_s``, and ``cpu_s`` = user + system seconds of the process and its finished children, so PyMC's
chain processes count): building the model from the data frame and sampling; ``import_s`` is the import of the
engine before it. Diagnostics over the hyperparameters (fixed effects, SDs, correlations, shape; not the group
effects): divergences, max R-hat, min bulk ESS; ``ess_per_s`` = min bulk ESS / wall seconds and
``ess_per_cpu_s`` = min bulk ESS / CPU seconds. For this engine they are ``fit.diagnostics``; for Bambi the
posterior variables without an observation or group-level dimension (Bambi 0.21 has no correlations between
group effects, so on ``(urban | district)`` and HS&B it samples fewer hyperparameters than this engine).
``import_cpu_s`` is the CPU seconds of the process up to the end of the engine's import (interpreter start,
pandas, and ``import bayeshlm`` or ``import arviz, bambi``), and ``ess_per_process_cpu_s`` = min bulk ESS / (import
CPU s + fit CPU s), the whole new process, for the cold and warm rows: this engine loads nutpie and arviz inside its
first fit while Bambi loads PyMC and arviz at import, so the fit-only ratio and this one split the same imports
differently. ``load_1m`` is the machine's 1-minute load average when the row is written. A child process that outlives
``--timeout`` is killed with its whole process group (PyMC's chain workers too) and its row says ``timeout > N s``.

brms (``brms``, cbpp and Contraception only) runs benchmarks/peers_brms.R in a new Rscript process with its
default priors and settings: the first fit compiles the Stan model (brms does so in every new process, so its
cold and warm new-process states are the same) and ``update()`` in that process is the refit.

This engine runs with the interpreter that runs this script (``PYTHONPATH`` decides which checkout; the row
records its git commit); Bambi with ``--bambi-python``, a separate environment (``python -m venv peers &&
peers/bin/pip install bambi nutpie``), never a dependency of the package. Every row is appended to ``--out`` as
it finishes; ``--report CSV`` prints the table and the ratios of this engine's ESS per second to each peer's,
taken within one run (``run`` column) and cache state.

Usage::

    python benchmarks/peers_bambi.py --bambi-python /work/peers/bambi/bin/python --models cbpp nbinom
    python benchmarks/peers_bambi.py --report benchmarks/results/bayes_peers.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "reference" / "glmm"
VERBAGG = Path("/work/shared/data/VerbAgg.csv")
ENGINES = ("bayeshlm", "bambi/pymc", "bambi/nutpie", "brms")
FIELDS = ["run", "model", "engine", "cache", "wall_s", "cpu_s", "import_s", "import_cpu_s", "divergences",
          "max_rhat", "min_ess_bulk", "ess_per_s", "ess_per_cpu_s", "ess_per_process_cpu_s", "load_1m", "commit",
          "versions", "error"]


@dataclass(frozen=True)
class Case:
    """One model: our formula and HLM options, Bambi's formula and family, and how to build its data."""

    ours: str
    ours_options: dict
    bambi: str
    bambi_family: str
    data: str  # key of DATA
    engines: tuple = ("bayeshlm", "bambi/pymc", "bambi/nutpie")


def _contraception() -> pd.DataFrame:
    import bayeshlm as bh

    data = bh.datasets.load("contraception")
    data["use"] = (data["use"] == "Y").astype(int)  # mlmRev codes use as N/Y; Y is the event
    data["livch"] = pd.Categorical(data["livch"], categories=["0", "1", "2", "3+"])
    return data


def _verbagg() -> pd.DataFrame:
    data = pd.read_csv(VERBAGG, dtype={"id": str, "item": str})
    data["r2"] = (data["r2"] == "Y").astype(int)
    for column in ("Gender", "btype", "situ"):
        data[column] = data[column].astype("category")
    return data[["r2", "Anger", "Gender", "btype", "situ", "id", "item"]]


def _poisson_olre() -> pd.DataFrame:
    data = pd.read_csv(REFERENCE / "poisson_exposure.csv")
    data["obs"] = [f"o{i:03d}" for i in range(len(data))]  # one level per row: observation-level effect
    data["log_years"] = np.log(data["years"])  # Bambi's offset term; this engine takes exposure="years"
    return data


def _salamanders() -> pd.DataFrame:
    data = pd.read_csv(REFERENCE / "salamanders.csv")
    data["mined"] = pd.Categorical(data["mined"], categories=["yes", "no"])  # R's level order
    return data


def _dataset(name: str):
    def load() -> pd.DataFrame:
        import bayeshlm as bh

        return bh.datasets.load(name)
    return load


DATA = {"cbpp": _dataset("cbpp"), "contraception": _contraception, "verbagg": _verbagg,
        "poisson_olre": _poisson_olre, "salamanders": _salamanders, "hsb": _dataset("hsb")}

# the HGLM acceptance models of issue 24 (specs of benchmarks/bench_bayes_glmm.py and bench_glmm.py) and HS&B
MODELS = {
    "cbpp": Case("cbind(incidence, size - incidence) ~ period + (1 | herd)", {"family": "binomial"},
                 "p(incidence, size) ~ period + (1 | herd)", "binomial", "cbpp", engines=ENGINES),
    "contraception_urban": Case("use ~ age + I(age**2) + urban + livch + (urban | district)",
                                {"family": "bernoulli"},
                                "use ~ age + I(age**2) + urban + livch + (urban | district)", "bernoulli",
                                "contraception", engines=ENGINES),
    "verbagg": Case("r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", {"family": "bernoulli"},
                    "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", "bernoulli", "verbagg"),
    "poisson_olre": Case("y ~ x + (1 | g) + (1 | obs)", {"family": "poisson", "exposure": "years"},
                         "y ~ x + offset(log_years) + (1 | g) + (1 | obs)", "poisson", "poisson_olre"),
    "nbinom": Case("count ~ cover + mined + (1 | site)", {"family": "negative_binomial"},
                   "count ~ cover + mined + (1 | site)", "negativebinomial", "salamanders"),
    "hsb": Case("mathach ~ meanses*cses + sector*cses + (cses | school)", {},
                "mathach ~ meanses*cses + sector*cses + (cses | school)", "gaussian", "hsb",
                engines=("bayeshlm", "bambi/nutpie")),
}

# run in a child process; reads the spec (JSON) from argv[1], prints one JSON record per fit
COMMON = textwrap.dedent("""
    import json, resource, sys, time, warnings
    warnings.simplefilter("ignore")

    def cpu():
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    spec = json.loads(sys.argv[1])
    started = time.perf_counter()
    import pandas as pd
""")

READ = textwrap.dedent("""
    data = pd.read_csv(spec["csv"], dtype={c: str for c in spec["categories"]})
    for column, levels in spec["categories"].items():
        data[column] = pd.Categorical(data[column], categories=levels)

    def timed(seed, model, build):
        wall, used = time.perf_counter(), cpu()
        model = model or build()
        record = sample(model, seed)
        wall, used = time.perf_counter() - wall, cpu() - used
        return model, {"wall_s": wall, "cpu_s": used, **record}

    model, first = timed(1, None, build)
    print(json.dumps(first | {"import_s": imported, "import_cpu_s": imported_cpu}), flush=True)
    if spec["refit"]:
        print(json.dumps(timed(2, model, build)[1]), flush=True)
""")

OURS = COMMON + textwrap.dedent("""
    import bayeshlm as bh
    imported, imported_cpu = time.perf_counter() - started, cpu()

    def build():
        return bh.HLM(spec["formula"], data, **spec["options"])

    def sample(model, seed):
        fit = model.fit(method="bayes", draws=spec["draws"], tune=spec["draws"], chains=spec["chains"],
                        random_seed=seed)
        d = fit.diagnostics
        return {"divergences": int(d["divergences"]), "max_rhat": float(d["max_rhat"]),
                "min_ess_bulk": float(d["min_ess_bulk"])}
""") + READ

BAMBI = COMMON + textwrap.dedent("""
    import arviz as az, bambi as bmb
    imported, imported_cpu = time.perf_counter() - started, cpu()

    def build():
        return bmb.Model(spec["formula"], data, family=spec["family"])

    def sample(model, seed):
        idata = model.fit(draws=spec["draws"], tune=spec["draws"], chains=spec["chains"],
                          cores=min(spec["chains"], 2), random_seed=seed, inference_method=spec["sampler"],
                          progressbar=False)
        post = idata.posterior
        # hyperparameters: no per-observation or per-group dimension, no non-centred offsets
        hyper = [v for v in post.data_vars if not v.endswith("_offset") and not any(
                 d == "__obs__" or d.endswith("__factor_dim") for d in post[v].dims)]
        ess, rhat = az.ess(idata, var_names=hyper, method="bulk"), az.rhat(idata, var_names=hyper)
        return {"divergences": int(idata.sample_stats["diverging"].sum()),
                "max_rhat": max(float(rhat[v].max()) for v in hyper),
                "min_ess_bulk": min(float(ess[v].min()) for v in hyper), "hyper": hyper}
""") + READ


def git_commit() -> str:
    """The commit of the checkout that ``import bayeshlm`` finds (with '+dirty' for local changes)."""
    import bayeshlm

    where = Path(bayeshlm.__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--", "bayeshlm"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")


def versions(python: str, packages: tuple[str, ...]) -> str:
    code = ("import importlib.metadata as m, sys; print(' '.join(f'{p} {m.version(p)}' for p in sys.argv[1:]))")
    return subprocess.run([python, "-c", code, *packages], capture_output=True, text=True).stdout.strip()


def child(python: str, script: str, spec: dict, cache: str, timeout: float) -> list[dict]:
    """Run ``script`` in a new process with ``cache`` as its PyTensor and Numba cache; its JSON records."""
    env = dict(os.environ, PYTENSOR_FLAGS=f"base_compiledir={cache}", NUMBA_CACHE_DIR=cache)
    # its own session, so a timeout ends the process group: PyMC's chain workers too, not only the parent
    proc = subprocess.Popen([python, "-c", script, json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tempfile.gettempdir(),
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        return [*records, {"error": f"timeout > {timeout:.0f} s"}]
    records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not records:
        lines = stderr.strip().splitlines()
        return [*records, {"error": lines[-1][:300] if lines else f"exit {proc.returncode}, no output"}]
    return records


def session_cpu(session: int, seen: dict[int, float]) -> float:
    """CPU seconds (user + system) of every process of ``session`` seen so far: ``seen`` keeps each process's
    last reading, so processes that have ended still count (up to one polling interval short)."""
    tick = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # fields after the name: state, ppid, pgrp, session, ..., utime, stime
            seen[int(pid)] = (int(fields[11]) + int(fields[12])) / tick
    return sum(seen.values())


def child_r(name: str, args) -> list[dict]:
    """benchmarks/peers_brms.R for ``name`` in a new Rscript process (its own session); its JSON records, each
    with the CPU seconds of the whole session (R, the compiler, rstan's chain workers) since its start mark."""
    command = ["Rscript", str(ROOT / "benchmarks" / "peers_brms.R"), name, str(args.draws), str(args.chains)]
    errors = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a long stderr cannot block R
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, cwd=ROOT,
                            start_new_session=True)
    seen: dict[int, float] = {}
    done = threading.Event()

    def poll():
        while not done.wait(0.2):
            session_cpu(proc.pid, seen)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    timer = threading.Timer(args.timeout, proc.kill)
    timer.start()
    records, mark = [], 0.0
    for line in proc.stdout:
        if line.startswith("{"):
            record = json.loads(line)
            now = session_cpu(proc.pid, seen)
            if "mark" in record:
                mark = now
            else:
                records.append(record | {"cpu_s": now - mark})
    proc.wait()
    errors.seek(0)
    stderr = errors.read()
    timer.cancel()
    done.set()
    if proc.returncode or not records:
        lines = stderr.strip().splitlines()
        reason = lines[-1][:300] if lines else f"exit {proc.returncode}, no output"
        return [*records, {"error": reason if proc.returncode != -9 else f"killed after {args.timeout:.0f} s"}]
    return records


def run_model(name: str, engines: list[str], args, write) -> None:
    case = MODELS[name]
    data = DATA[case.data]()
    with tempfile.TemporaryDirectory(prefix="peers-") as workdir:
        csv_path = os.path.join(workdir, f"{name}.csv")
        data.to_csv(csv_path, index=False)
        categories = {c: [str(v) for v in data[c].cat.categories] if isinstance(data[c].dtype, pd.CategoricalDtype)
                      else sorted(data[c].astype(str).unique()) for c in data.columns
                      if not pd.api.types.is_numeric_dtype(data[c])}
        for engine in [e for e in engines if e in case.engines]:
            if engine == "brms":  # compiles in every new R process: cold, then update() in it as the refit
                records = child_r(name, args)
                for state, record in zip(("cold", "refit"), records, strict=False):
                    write(name, engine, state, record)
                continue
            if engine == "bayeshlm":
                python, script = sys.executable, OURS
                spec = {"formula": case.ours, "options": case.ours_options}
            else:
                python, script = args.bambi_python, BAMBI
                spec = {"formula": case.bambi, "family": case.bambi_family, "sampler": engine.split("/")[1]}
            spec |= {"csv": csv_path, "categories": categories, "draws": args.draws, "chains": args.chains}
            cache = tempfile.mkdtemp(dir=workdir, prefix="cache-")
            records = [("cold", r) for r in child(python, script, spec | {"refit": False}, cache, args.timeout)]
            if "error" not in records[-1][1]:
                records += zip(("warm", "refit"), child(python, script, spec | {"refit": True}, cache,
                                                       args.timeout), strict=False)
            for state, record in records:
                write(name, engine, state, record)


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"run": str, "commit": str})  # a commit such as 15e5379 is not a number


def summarise(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows and the ratios ours / peer of ESS per wall second and per CPU second, within one run."""
    measures = ["ess_per_s", "ess_per_cpu_s", "ess_per_process_cpu_s"]
    table = table.assign(**{m: table.get(m, float("nan")) for m in measures})  # CSVs from before a column
    ours = table.loc[table["engine"] == "bayeshlm", ["run", "model", "cache", *measures]]
    peers = table.loc[table["engine"] != "bayeshlm", ["run", "model", "cache", "engine", *measures]]
    ratios = peers.merge(ours, on=["run", "model", "cache"], suffixes=("_peer", "_ours")).dropna(
        subset=["ess_per_s_peer", "ess_per_s_ours"])
    ratios["ratio_wall"] = ratios["ess_per_s_ours"] / ratios["ess_per_s_peer"]
    ratios["ratio_cpu"] = ratios["ess_per_cpu_s_ours"] / ratios["ess_per_cpu_s_peer"]
    ratios["ratio_process_cpu"] = ratios["ess_per_process_cpu_s_ours"] / ratios["ess_per_process_cpu_s_peer"]
    return table, ratios


def report(table: pd.DataFrame) -> None:
    rows, ratios = summarise(table)
    shown = [c for c in FIELDS if c in rows and c not in ("versions", "error") and rows[c].notna().any()]
    print(rows[shown].round(3).to_string(index=False))
    print("\nmin bulk ESS per second, this engine / peer, same run and cache state (wall and CPU seconds of the "
          "fit; CPU seconds of the whole process)")
    print(ratios[["run", "model", "cache", "engine", "ess_per_s_ours", "ess_per_s_peer", "ratio_wall",
                  "ratio_cpu", "ratio_process_cpu"]].round(2).to_string(index=False))
    if "error" in rows and rows["error"].notna().any():
        print("\nerrors:\n" + rows.dropna(subset=["error"])[["model", "engine", "cache", "error"]].to_string())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--bambi-python", help="a Python interpreter with bambi and nutpie installed")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1500, help="seconds per child process")
    parser.add_argument("--run", help="label of this run in the CSV (default: its UTC start time)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bayes_peers.csv"))
    parser.add_argument("--report", metavar="CSV", nargs="+", help="print earlier runs' tables; run nothing")
    args = parser.parse_args(argv)
    if args.report:
        report(pd.concat([read(p) for p in args.report], ignore_index=True))
        return
    engines = [e for e in args.engines if e == "bayeshlm" or e == "brms" or args.bambi_python]
    if "brms" in engines and (shutil.which("Rscript") is None or subprocess.run(
            ["Rscript", "-e", "library(brms)"], capture_output=True).returncode):
        print("brms left out: Rscript cannot load brms (Debian: apt-get install r-cran-brms)", flush=True)
        engines.remove("brms")
    run = args.run or time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
    commit = git_commit()
    peer_versions = versions(args.bambi_python, ("bambi", "pymc", "pytensor", "nutpie")) if args.bambi_python else ""
    our_versions = versions(sys.executable, ("pymc", "pytensor", "nutpie", "numba"))
    brms_versions = subprocess.run(["Rscript", "-e", 'cat("brms", format(packageVersion("brms")), "rstan", '
                                    'format(packageVersion("rstan")))'], capture_output=True,
                                   text=True).stdout.strip() if "brms" in engines else ""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with out.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()

        def write(model, engine, state, record):
            ess, wall, used = record.get("min_ess_bulk"), record.get("wall_s"), record.get("cpu_s")
            row = {"run": run, "model": model, "engine": engine, "cache": state, "commit": commit,
                   "versions": {"bayeshlm": our_versions, "brms": brms_versions}.get(engine, peer_versions),
                   **record,
                   "ess_per_s": ess / wall if ess and wall else None,
                   "ess_per_cpu_s": ess / used if ess and used else None,
                   # the whole new process: interpreter start, imports and the fit (cold and warm rows only)
                   "ess_per_process_cpu_s": ess / (used + record["import_cpu_s"])
                   if ess and used and record.get("import_cpu_s") else None,
                   "load_1m": os.getloadavg()[0]}  # the machine's 1-minute load average when the row ends
            writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            handle.flush()
            print(json.dumps({k: v for k, v in row.items() if k != "versions"}), flush=True)

        for name in args.models:
            run_model(name, engines, args, write)
    report(read(out).query("run == @run"))


if __name__ == "__main__":
    main()
