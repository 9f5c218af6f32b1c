"""Command line: ``bayeshlm datasets``, ``bayeshlm describe``, ``bayeshlm demo``."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from . import datasets
from .errors import InputError
from .model import HLM

DEMO_FORMULA = "mathach ~ meanses*cses + sector*cses + (cses | school)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bayeshlm", description="Bayesian hierarchical linear models.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("datasets", help="list the bundled datasets")
    describe = commands.add_parser("describe", help="describe a model on a bundled dataset")
    describe.add_argument("dataset")
    describe.add_argument("formula")
    demo = commands.add_parser("demo", help="fit the HS&B intercepts-and-slopes-as-outcomes model (R&B 2002, "
                               "Table 4.5) by REML and Bayes and compare")
    demo.add_argument("--draws", type=int, default=1000, help="posterior draws per chain (default 1000)")
    args = parser.parse_args(argv)
    try:
        if args.command == "datasets":
            print(datasets.list().to_string())
        elif args.command == "describe":
            _describe(HLM(args.formula, datasets.load(args.dataset)))
        else:
            _demo(args.draws)
    except InputError as err:
        print(f"bayeshlm: {err}", file=sys.stderr)
        return 2
    return 0


def _describe(model: HLM) -> None:
    print(model.summary())
    print()
    print(model.equations().text)


def _demo(draws: int) -> None:
    """Fit the HS&B intercepts-and-slopes-as-outcomes model by REML and by full Bayes, and compare."""
    from .report import compare

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
