"""Command line: ``bayeshlm datasets``, ``describe``, ``fit models/<file>.toml`` or ``fit --data file.csv
--formula "..."``, ``demo``."""

from __future__ import annotations

import argparse
import sys
import unicodedata
import warnings
from pathlib import Path

import pandas as pd

from . import datasets
from .errors import InputError, OptionError
from .model import HLM
from .progress import reporting

SAMPLING_OPTIONS = {"draws", "tune", "chains", "random_seed", "priors", "sampler", "target_accept", "route",
                    "parameterization", "progressbar"}
DEMO_FORMULA = "mathach ~ meanses*cses + sector*cses + (cses | school)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bayeshlm", description="Bayesian hierarchical linear models.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("datasets", help="list the bundled datasets")
    describe = commands.add_parser("describe", help="describe a model on a bundled dataset")
    describe.add_argument("dataset")
    describe.add_argument("formula")
    fit = commands.add_parser("fit", help="fit a model file (see models/), or a formula on a CSV file, and print "
                              "its report", description="Give a model file, or --data and --formula, e.g. "
                              "bayeshlm fit --data scores.csv --formula \"score ~ ses + (1 | school)\"")
    fit.add_argument("model_file", nargs="?", help="TOML model file")
    fit.add_argument("--data", help="CSV file (UTF-8, header row) to fit --formula on")
    fit.add_argument("--formula", help="model formula, e.g. \"y ~ x + (1 | g)\" (with --data)")
    fit.add_argument("--method", choices=["reml", "ml", "bayes"],
                     help="estimation method (default: the file's [fit] method, or reml)")
    fit.add_argument("--draws", type=_positive_int, help="posterior draws per chain (Bayes)")
    fit.add_argument("--tune", type=_positive_int, help="tuning draws per chain (Bayes; default: as --draws)")
    fit.add_argument("--chains", type=_positive_int, help="number of chains (Bayes)")
    fit.add_argument("--seed", type=_seed, help="random seed, a whole number >= 0 (Bayes)")
    fit.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="one line per step on standard error (loading, compiling, sampling) and, with --progress, "
                     "nutpie's per-chain progress (default: shown when standard error is a terminal)")
    fit.add_argument("--out", help="directory for estimates (netCDF), the report and figures (PNG)")
    fit.add_argument("--data-root", help="folder the model file's 'data' path may point into (default: the "
                     "model file's own folder)")
    demo = commands.add_parser("demo", help="fit the HS&B intercepts-and-slopes-as-outcomes model (R&B 2002, "
                               "Table 4.5) by REML and Bayes and compare")
    demo.add_argument("--draws", type=_positive_int, default=1000, help="posterior draws per chain (default 1000)")
    args = parser.parse_args(argv)
    if args.command == "fit" and args.model_file is not None and (args.data or args.formula):
        fit.error("give a model file, or --data with --formula -- not both")
    if args.command == "fit" and args.model_file is None and (args.data is None or args.formula is None):
        fit.error("give a model file, or both --data and --formula")
    previous_showwarning, warnings.showwarning = warnings.showwarning, _show_clean_warning
    try:
        if args.command == "datasets":
            print(datasets.list().to_string())
        elif args.command == "describe":
            _describe(HLM(args.formula, datasets.load(args.dataset)))
        elif args.command == "fit":
            _fit(args)
        else:
            _demo(args.draws)
    except InputError as err:
        print(f"bayeshlm: {clean(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:  # writing --out on a full disk or a read-only folder
        print(f"bayeshlm: cannot write the outputs: {clean(str(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bayeshlm: interrupted (Ctrl-C); the run did not finish.", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous_showwarning
    return 0


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (``--draws 0`` used to fall back to the default 1000)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _seed(text: str) -> int:
    """argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def clean(text: str) -> str:
    """``text`` without control characters (Unicode category Cc: escape sequences, carriage returns, bells),
    keeping newlines and tabs: names and titles from a user's file must not drive the terminal."""
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")


def _show_clean_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print a warning as Python does, without control characters (its text may quote column names)."""
    text = warnings.formatwarning(message, category, filename, lineno, line)
    (file or sys.stderr).write(clean(text))


def _describe(model: HLM) -> None:
    print(clean(model.summary()))
    print()
    print(clean(model.equations().text))


def _fit(args) -> None:
    model = _model(args)
    options = dict(model.fit_options)
    if args.method:
        options["method"] = args.method
    if args.draws is not None:
        options.update(draws=args.draws, tune=args.draws)
    given = {"tune": args.tune, "chains": args.chains, "random_seed": args.seed}
    options.update({k: v for k, v in given.items() if v is not None})
    if options.get("method", "reml") != "bayes":
        # a Bayes file refitted with --method reml/ml: its sampling options do not apply; anything else is
        # passed on, so the engine names an option it does not know instead of it being dropped silently
        dropped = sorted(set(options) & SAMPLING_OPTIONS)
        if dropped:
            print(clean(f"(ignoring sampling options {', '.join(dropped)} for a likelihood fit)"))
        options = {k: v for k, v in options.items() if k not in SAMPLING_OPTIONS}
    print(clean(f"{model.title}\n"), flush=True)
    method = options.get("method", "reml")
    if method == "bayes":
        if args.progress is not None:  # the fit's steps; --progress adds nutpie's per-chain progress
            options.update(progress=args.progress, progressbar=args.progress)
        fit = model.fit(**options)
    else:
        with reporting(args.progress, f"fitting by {method.upper()}..."):
            fit = model.fit(**options)
    report = clean(str(fit.report()))
    print(report)
    if args.out:
        _write_outputs(fit, str(report), Path(args.out))


def _model(args) -> HLM:
    """The model of a model file, or of ``--formula`` on the ``--data`` CSV (checked like every formula: the
    allow-list of :mod:`bayeshlm.spec.expressions` applies, never ``unsafe_formula``)."""
    from .model_file import load_model, read_csv

    if args.model_file is not None:
        return load_model(args.model_file, data_root=args.data_root)
    if args.data_root is not None:
        raise OptionError("--data-root is for model files that name their data; with --data give the CSV path "
                          "itself.")
    model = HLM(args.formula, read_csv(Path(args.data), f"--data {args.data!r}"))
    model.fit_options = {}
    model.title = f"{args.formula}  (data: {args.data})"
    return model


def _write_outputs(fit, report: str, out: Path) -> None:
    """report.txt, the fit's datasets (estimates.nc; posterior.nc for Bayes) and shrinkage / caterpillar PNGs."""
    from . import plots
    from .results import FitResult
    from .results.export import output_datasets
    from .results.storage import write_netcdf_atomically

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.txt").write_text(clean(report) + "\n")
    written = ["report.txt"]
    for name, dataset in output_datasets(fit).items():
        write_netcdf_atomically(dataset, out / f"{name}.nc", "bayeshlm fit")
        written.append(f"{name}.nc")
    if isinstance(fit, FitResult) and fit.design.chain:  # the group plots read the Gaussian engines' results
        factor = fit.design.chain[0].name
        for name, draw in (("shrinkage", plots.shrinkage), ("caterpillar", plots.caterpillar)):
            try:
                draw(fit, factor).savefig(out / f"{name}.png", dpi=120)
                written.append(f"{name}.png")
            except InputError as err:
                print(clean(f"(no {name} plot: {err})"))
    print(f"\nWrote {', '.join(written)} to {out}/")


def _demo(draws: int) -> None:
    """Fit the HS&B intercepts-and-slopes-as-outcomes model by REML and by full Bayes, and compare."""
    from .results.comparison import compare

    print("High School and Beyond: intercepts- and slopes-as-outcomes model (Raudenbush & Bryk 2002, Table 4.5)")
    print(datasets.describe("hsb"))
    print()
    model = HLM(DEMO_FORMULA, datasets.load("hsb"))
    reml = model.fit(method="reml")
    print(reml.report())
    print()
    print(f"Full Bayes: 4 chains x {draws} draws (the first run compiles the model graph)...", flush=True)
    bayes = model.fit(method="bayes", draws=draws, tune=draws, chains=4, random_seed=2002)
    print(bayes.report())
    print()
    print("REML beside Bayes (diff/se: Bayes minus REML in REML standard errors)")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(compare(reml, bayes).round(3).to_string())


if __name__ == "__main__":
    sys.exit(main())
