"""Bundled public multilevel and meta-analysis datasets.

``load(name)`` returns a fresh pandas DataFrame; ``list()`` describes every dataset with its provenance.
The CSV files are exports of R package data (see ``data/PROVENANCE.md`` for versions and column meanings);
``hsb`` is the High School and Beyond frame in the form Raudenbush & Bryk (2002, ch. 4) analyse it.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd

from ..errors import OptionError, closest_names

__all__ = ["load", "list", "describe"]


@dataclass(frozen=True)
class _Dataset:
    file: str | None
    description: str
    source: str


_CATALOGUE: dict[str, _Dataset] = {
    "hsb": _Dataset(
        None,
        "High School and Beyond in the book's form: 7,185 students in 160 schools; mathach, ses, cses "
        "(ses centred at the school mean), meanses (school-file MEANSES centred at the mean of the 160 schools), "
        "sector (1 = Catholic), school, minority, female",
        "nlme::MathAchieve + nlme::MathAchSchool; Raudenbush & Bryk (2002), ch. 4",
    ),
    "hsb82": _Dataset("Hsb82.csv", "HS&B students as packaged in mlmRev (meanses from the sampled students)",
                      "mlmRev::Hsb82"),
    "math_achieve": _Dataset("MathAchieve.csv", "HS&B student file (7,185 students, same order as hsb82)",
                             "nlme::MathAchieve"),
    "math_ach_school": _Dataset("MathAchSchool.csv", "HS&B school file (160 schools: size, sector, MEANSES, ...)",
                                "nlme::MathAchSchool"),
    "egsingle": _Dataset("egsingle.csv", "Sustaining Effects Study maths scores: 7,230 tests of 1,721 children "
                         "in 60 schools (three-level growth)", "mlmRev::egsingle; Raudenbush & Bryk (2002), ch. 8"),
    "scotssec": _Dataset("ScotsSec.csv", "Scottish secondary attainment: 3,435 pupils cross-classified by 148 "
                         "primary x 19 secondary schools", "mlmRev::ScotsSec; Paterson (1991)"),
    "sleepstudy": _Dataset("sleepstudy.csv", "Reaction times of 18 sleep-deprived subjects over 10 days",
                           "lme4::sleepstudy; Belenky et al. (2003)"),
    "oxboys": _Dataset("Oxboys.csv", "Heights of 26 Oxford boys at 9 occasions", "mlmRev::Oxboys / nlme::Oxboys"),
    "exam": _Dataset("Exam.csv", "Inner-London exam scores: 4,059 students in 65 schools",
                     "mlmRev::Exam; Goldstein et al. (1993)"),
    "early": _Dataset("Early.csv", "Early childhood intervention: cognitive scores of 103 infants at 3 ages",
                      "mlmRev::Early; Burchinal et al. (1997)"),
    "contraception": _Dataset("Contraception.csv", "Bangladesh Fertility Survey 1988: contraceptive use of "
                              "1,934 women in 60 districts", "mlmRev::Contraception; Huq & Cleland (1990)"),
    "cbpp": _Dataset("cbpp.csv", "Contagious bovine pleuropneumonia: new cases (incidence) among size cattle in "
                     "15 Ethiopian herds over 4 periods (binomial outcome)", "lme4::cbpp; Lesnoff et al. (2004)"),
    "teacher_expectancy": _Dataset("dat.raudenbush1985.csv", "19 teacher-expectancy (Pygmalion) experiments: "
                                   "standardised mean difference yi, sampling variance vi, weeks of prior contact "
                                   "(raw) and weeks_c (capped at 3, as the book codes it)",
                                   "metadat::dat.raudenbush1985; Raudenbush (1984); R&B (2002), ch. 7"),
    "sat_coaching": _Dataset("dat.kalaian1996.csv", "SAT coaching studies, verbal and/or maths effects per study "
                             "(multivariate meta-analysis)", "metadat::dat.kalaian1996; Kalaian & Raudenbush (1996)"),
    "berkey": _Dataset("dat.berkey1998.csv", "Periodontal surgery trials: 5 trials x 2 correlated outcomes with "
                       "known within-trial covariance (v1i, v2i)", "metadat::dat.berkey1998; Berkey et al. (1998)"),
    "konstantopoulos": _Dataset("dat.konstantopoulos2011.csv", "Modified school calendar studies: 56 schools in "
                                "11 districts (three-level meta-analysis)",
                                "metadat::dat.konstantopoulos2011; Konstantopoulos (2011)"),
    "eight_schools": _Dataset("eight_schools.csv", "Rubin's eight schools SAT coaching experiments: effect y and "
                              "its standard error sigma", "Rubin (1981); Gelman et al., BDA Table 5.2"),
}

# Columns that the CSV exports store as R factors with labels; the loader keeps them as strings
# so that an ID such as school "1224" is a label, not a number.
_LABEL_COLUMNS: dict[str, tuple[str, ...]] = {
    "Hsb82.csv": ("school",),
    "MathAchieve.csv": ("School",),
    "MathAchSchool.csv": ("School",),
    "egsingle.csv": ("schoolid", "childid"),
    "ScotsSec.csv": ("primary", "second"),
    "sleepstudy.csv": ("Subject",),
    "Oxboys.csv": ("Subject",),
    "Exam.csv": ("school", "student"),
    "Early.csv": ("id",),
    "Contraception.csv": ("woman", "district"),
    "cbpp.csv": ("herd",),
}


def list() -> pd.DataFrame:  # noqa: A001 - the name is the documented API
    """Describe the bundled datasets: one row per name with a description and its source."""
    return pd.DataFrame(
        {"description": [d.description for d in _CATALOGUE.values()],
         "source": [d.source for d in _CATALOGUE.values()]},
        index=pd.Index(builtins.list(_CATALOGUE), name="name"),
    )


def describe(name: str) -> str:
    """One-line description and provenance of dataset ``name``."""
    entry = _entry(name)
    return f"{name}: {entry.description} [{entry.source}]"


def load(name: str) -> pd.DataFrame:
    """Load bundled dataset ``name`` (see :func:`list`) as a new pandas DataFrame."""
    entry = _entry(name)
    if name == "hsb":
        return _hsb()
    frame = _read(entry.file)
    if name == "teacher_expectancy":
        frame["weeks_c"] = np.minimum(frame["weeks"], 3)
    if name == "cbpp":
        frame["period"] = pd.Categorical(frame["period"].astype(str), categories=["1", "2", "3", "4"])
    if name == "egsingle":
        # Indicators stored as R factors "0"/"1": numeric 0/1 is what models want.
        for column in ("retained", "black", "hispanic"):
            frame[column] = frame[column].astype(int)
    return frame


def _entry(name: str) -> _Dataset:
    if not isinstance(name, str):
        raise OptionError(f"A dataset is named by text, e.g. 'hsb'; got {name!r} ({type(name).__name__}). "
                          f"Available: {', '.join(_CATALOGUE)}.")
    if name not in _CATALOGUE:
        raise OptionError(
            f"No bundled dataset called {name!r}.{closest_names(name, _CATALOGUE)} "
            f"Available: {', '.join(_CATALOGUE)}."
        )
    return _CATALOGUE[name]


def _read(file: str) -> pd.DataFrame:
    labels = {column: str for column in _LABEL_COLUMNS.get(file, ())}
    with resources.files(__package__).joinpath("data", file).open("rb") as handle:
        return pd.read_csv(handle, dtype=labels)


def _hsb() -> pd.DataFrame:
    """HS&B in the book's form (R&B 2002, Table 4.1).

    MEANSES comes from the school file and is centred at the mean of the 160 school values: with the
    mlmRev student-sample means instead, Table 4.5's intercepts come out 12.685/12.128 instead of 12.65/12.10.
    """
    students = _read("MathAchieve.csv")
    schools = _read("MathAchSchool.csv")
    school_meanses = schools.set_index("School")["MEANSES"]
    school_meanses = school_meanses - school_meanses.mean()
    sector = (schools.set_index("School")["Sector"] == "Catholic").astype(int)
    frame = pd.DataFrame({
        "school": students["School"],
        "mathach": students["MathAch"],
        "ses": students["SES"],
        "minority": (students["Minority"] == "Yes").astype(int),
        "female": (students["Sex"] == "Female").astype(int),
    })
    frame["cses"] = frame["ses"] - frame.groupby("school")["ses"].transform("mean")
    frame["meanses"] = frame["school"].map(school_meanses)
    frame["sector"] = frame["school"].map(sector)
    return frame[["school", "mathach", "ses", "cses", "meanses", "sector", "minority", "female"]]
