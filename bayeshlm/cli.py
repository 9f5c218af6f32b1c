"""Command line: ``bayeshlm datasets``, ``bayeshlm describe``, ``bayeshlm demo``."""

from __future__ import annotations

import argparse
import sys

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
    commands.add_parser("demo", help="the HS&B intercepts-and-slopes-as-outcomes model (R&B 2002, Table 4.5)")
    args = parser.parse_args(argv)
    try:
        if args.command == "datasets":
            print(datasets.list().to_string())
        elif args.command == "describe":
            _describe(HLM(args.formula, datasets.load(args.dataset)))
        else:
            _demo()
    except InputError as err:
        print(f"bayeshlm: {err}", file=sys.stderr)
        return 2
    return 0


def _describe(model: HLM) -> None:
    print(model.summary())
    print()
    print(model.equations().text)


def _demo() -> None:
    print("High School and Beyond: intercepts- and slopes-as-outcomes model (Raudenbush & Bryk 2002, Table 4.5)")
    print(datasets.describe("hsb"))
    print()
    _describe(HLM(DEMO_FORMULA, datasets.load("hsb")))


if __name__ == "__main__":
    sys.exit(main())
