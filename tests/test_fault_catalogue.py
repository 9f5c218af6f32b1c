"""The fault catalogue of issue 21, continued from test_input_catalogue.py and test_design_errors.py: every bad
input below reaches a bayeshlm exception of the stated type whose message names the culprit (the option, column,
parameter or file) -- never a raw dependency exception, a Rust panic or a silent default. No sampling: option
errors are raised before any model is compiled. The last tests cover interrupted sampling and undefined
diagnostics."""

import importlib
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import bayeshlm as bh
from bayeshlm.bayes import Prior
from bayeshlm.bayes.diagnostics import diagnose
from bayeshlm.bayes.sampling import check_complete
from bayeshlm.design.build import check_rank
from bayeshlm.errors import FitFormatError, SaveError

RNG = np.random.default_rng(21)
GROUPS = np.repeat(np.arange(5), 6)
DATA = pd.DataFrame({"y": RNG.normal(size=30) + RNG.normal(size=5)[GROUPS], "x": RNG.normal(size=30),
                     "g": [f"s{k}" for k in GROUPS]})
MODEL = bh.HLM("y ~ x + (1 | g)", DATA)
TEACHERS = bh.datasets.load("teacher_expectancy")
BERKEY = bh.datasets.load("berkey")
V_COLUMNS = ["v1i", "v2i"]


def _bayes(**options):
    return lambda tmp: MODEL.fit("bayes", **options)


def _meta(formula="yi ~ 1", data=TEACHERS, **options):
    return lambda tmp: bh.meta(formula, data, **{"vi": "vi", "study": "study", **options})


def _meta_mv(data=BERKEY, **options):
    return lambda tmp: bh.meta_mv(data, "yi", "outcome", "trial", **{"V": V_COLUMNS, **options})


def _berkey_with(row, column, value):
    frame = BERKEY.copy()
    if frame[column].dtype.kind in "fi" and isinstance(value, str):
        frame[column] = frame[column].astype(object)
    frame.loc[row, column] = value
    return frame


def _prior(dist, **params):
    return lambda tmp: Prior(dist, **params)


def _file(content: bytes, name="fit.nc"):
    def load(tmp):
        path = tmp / name
        path.write_bytes(content)
        return bh.load_fit(path)
    return load


def _other_netcdf(engine):
    def load(tmp):
        xr.Dataset({"a": ("x", [1.0, 2.0])}).to_netcdf(tmp / "other.nc", engine=engine)
        return bh.load_fit(tmp / "other.nc")
    return load


def _model_file(text: str, csv: bytes | None = None):
    def load(tmp):
        (tmp / "m.toml").write_text(text)
        if csv is not None:
            (tmp / "d.csv").write_bytes(csv)
        return bh.load_model(tmp / "m.toml")
    return load


OPTION = bh.OptionError
CASES = [
    # --- sampler options: checked before priors or compilation (nutpie panicked in Rust on tune=0) ---------
    ("tune=0 with nutpie", _bayes(tune=0), OPTION, r"tune=0: give a positive whole number.*nutpie needs at least "
                                                   r"one tuning step"),
    ("tune negative", _bayes(tune=-1), OPTION, r"tune=-1: give a positive whole number"),
    ("tune a float", _bayes(tune=10.5), OPTION, r"tune=10.5: give a positive whole number"),
    ("tune negative with pymc", _bayes(tune=-1, sampler="pymc"), OPTION, r"tune=-1: give a whole number >= 0"),
    ("draws a whole float", _bayes(draws=200.0), OPTION, r"draws=200.0: give a positive whole number"),
    ("draws zero", _bayes(draws=0), OPTION, r"draws=0: give a positive whole number"),
    ("draws True", _bayes(draws=True), OPTION, r"draws=True: give a positive whole number"),
    ("draws text", _bayes(draws="200"), OPTION, r"draws='200': give a positive whole number"),
    ("draws None", _bayes(draws=None), OPTION, r"draws=None: give a positive whole number"),
    ("chains zero", _bayes(chains=0), OPTION, r"chains=0: give a positive whole number"),
    ("chains a float", _bayes(chains=2.0), OPTION, r"chains=2.0: give a positive whole number"),
    ("chains negative numpy", _bayes(chains=np.int64(-2)), OPTION, r"chains=.*-2.*: give a positive whole number"),
    ("seed 2**64", _bayes(random_seed=2**64), OPTION, r"random_seed=18446744073709551616: give a whole number "
                                                      r"from 0 to 2\*\*64 - 1"),
    ("seed negative", _bayes(random_seed=-1), OPTION, r"random_seed=-1: give a whole number from 0"),
    ("seed a float", _bayes(random_seed=1.5), OPTION, r"random_seed=1.5: give a whole number"),
    ("seed True", _bayes(random_seed=True), OPTION, r"random_seed=True: give a whole number"),
    ("seed text", _bayes(random_seed="7"), OPTION, r"random_seed='7': give a whole number"),
    ("target_accept text", _bayes(target_accept="0.9"), OPTION, r"target_accept='0.9': give a number between 0 "
                                                                r"and 1"),
    ("target_accept 1", _bayes(target_accept=1.0), OPTION, r"target_accept=1.0: give a number between 0 and 1"),
    ("target_accept 0", _bayes(target_accept=0), OPTION, r"target_accept=0: give a number between 0 and 1"),
    ("target_accept NaN", _bayes(target_accept=float("nan")), OPTION, r"target_accept=nan: give a number"),
    ("target_accept True", _bayes(target_accept=True), OPTION, r"target_accept=True: give a number"),
    ("sampler unknown", _bayes(sampler="stan"), OPTION, r"sampler='stan': use 'nutpie' \(default\) or 'pymc'"),
    ("sampler None", _bayes(sampler=None), OPTION, r"sampler=None: use 'nutpie'"),
    ("progressbar text", _bayes(progressbar="yes"), OPTION, r"progressbar='yes': give True or False"),
    ("parameterization text", _bayes(parameterization="centred"), OPTION,
     r"parameterization='centred': give a dict \{factor: 'centred' or 'non-centred'\}"),
    ("parameterization value", _bayes(parameterization={"g": "central"}), OPTION,
     r"parameterization\['g'\] = 'central': use 'centred' or 'non-centred'"),
    ("route unknown", _bayes(route="integrated"), OPTION, r"route='integrated': use one of"),
    ("option misspelt", _bayes(drawz=10), OPTION, r"Unknown option 'drawz' for method='bayes'. Did you mean "
                                                  r"'draws'"),
    ("priors text", _bayes(priors="flatt"), OPTION, r"priors='flatt': use None"),
    ("priors a number", _bayes(priors=3), OPTION, r"priors must be None, 'flat' or a dict"),
    ("prior value not a Prior", _bayes(priors={"sigma": 3}), OPTION, r"priors\['sigma'\] = 3: give a "
                                                                     r"bayeshlm.bayes.Prior"),
    ("prior name misspelt", _bayes(priors={"sigmaa": Prior("HalfNormal", sigma=1)}), OPTION,
     r"priors: no parameter 'sigmaa' in this model. Did you mean 'sigma'"),
    ("corr prior on a model without correlations", _bayes(priors={"corr_g": 2}), OPTION,
     r"priors: no parameter 'corr_g'"),
    ("variance prior on a fixed effect", _bayes(priors={"x": Prior("HalfFlat", on="variance")}), OPTION,
     r"priors\['x'\]: on='variance' applies only to sigma and tau_\* priors"),
    ("likelihood option with Bayes name", lambda tmp: MODEL.fit("reml", draws=10), OPTION,
     r"Unknown option 'draws' for method='reml'"),
    ("method misspelt", lambda tmp: MODEL.fit("bayse"), OPTION, r"Unknown method 'bayse'"),
    # --- priors: parameter names and values checked when the Prior is made ----------------------------------
    ("Normal mean=", _prior("Normal", mean=0, sigma=1), OPTION, r"Normal has no parameter 'mean'. Did you mean "
                                                                r"'mu'\? Normal takes mu, sigma, tau"),
    ("Normal sd=", _prior("Normal", mu=0, sd=1), OPTION, r"Normal has no parameter 'sd'. Did you mean 'sigma'"),
    ("Normal sigmma=", _prior("Normal", sigmma=1), OPTION, r"no parameter 'sigmma'. Did you mean 'sigma'"),
    ("HalfStudentT df=", _prior("HalfStudentT", df=3, sigma=1), OPTION, r"HalfStudentT has no parameter 'df'. "
                                                                        r"Did you mean 'nu'"),
    ("HalfCauchy scale=", _prior("HalfCauchy", scale=2), OPTION, r"HalfCauchy has no parameter 'scale'. Did you "
                                                                 r"mean 'beta'"),
    ("HalfFlat with a parameter", _prior("HalfFlat", sigma=1), OPTION, r"HalfFlat has no parameter 'sigma'.* "
                                                                       r"HalfFlat takes no parameters"),
    ("Normal sigma negative", _prior("Normal", mu=0, sigma=-1), OPTION, r"sigma=-1\): sigma must be positive"),
    ("Normal sigma zero", _prior("Normal", mu=0, sigma=0), OPTION, r"sigma=0\): sigma must be positive"),
    ("HalfNormal sigma array with a zero", _prior("HalfNormal", sigma=[1.0, 0.0]), OPTION,
     r"sigma=\[1.0, 0.0\]\): sigma must be positive"),
    ("HalfStudentT nu zero", _prior("HalfStudentT", nu=0, sigma=1), OPTION, r"nu=0\): nu must be positive"),
    ("Exponential lam negative", _prior("Exponential", lam=-2), OPTION, r"lam=-2\): lam must be positive"),
    ("Gamma alpha zero", _prior("Gamma", alpha=0, beta=1), OPTION, r"alpha=0\): alpha must be positive"),
    ("Normal sigma text", _prior("Normal", mu=0, sigma="wide"), OPTION, r"sigma='wide'\): give a number"),
    ("Normal mu NaN", _prior("Normal", mu=float("nan"), sigma=1), OPTION, r"mu=nan\): give finite numbers"),
    ("Normal mu infinite", _prior("Normal", mu=np.inf, sigma=1), OPTION, r"mu=inf\): give finite numbers"),
    ("Uniform bounds reversed", _prior("Uniform", lower=2, upper=1), OPTION, r"lower must be below upper"),
    ("distribution misspelt", _prior("Normall", mu=0), OPTION, r"Prior\('Normall'\): not a PyMC distribution. "
                                                               r"Did you mean 'Normal'"),
    ("scale misspelt", lambda tmp: Prior("HalfFlat", on="var"), OPTION, r"Prior\(on='var'\): use 'sd' or "
                                                                        r"'variance'"),
    # --- meta(): univariate meta-analysis -------------------------------------------------------------------
    ("meta two tildes", _meta("yi ~ 1 ~ weeks"), bh.FormulaError, r"with one '~'.*got 'yi ~ 1 ~ weeks'"),
    ("meta formula not text", _meta(3), bh.FormulaError, r"meta\(\) takes a formula 'effect ~ moderators'"),
    ("meta random term", _meta("yi ~ 1 + (1 | study)"), bh.FormulaError, r"adds the random study effect"),
    ("meta data a dict", _meta(data={"yi": [1.0]}), bh.DataError, r"meta\(\) takes a pandas DataFrame.*got dict"),
    ("meta study column absent", _meta(study="studdy"), bh.DataError, r"study='studdy' is not a column.*Did you "
                                                                      r"mean 'study'"),
    ("meta vi column absent", _meta(vi="v"), bh.DataError, r"'v' is not a column"),
    ("meta repeated study", _meta(data=pd.concat([TEACHERS, TEACHERS.iloc[:1]])), bh.DataError,
     r"study 1 has 2 rows \(1 studies have several\)"),
    ("meta vi negative", _meta(data=TEACHERS.assign(vi=-TEACHERS["vi"])), bh.DataError,
     r"variances in 'vi' must be positive"),
    ("meta vi zero", _meta(data=TEACHERS.assign(vi=0.0)), bh.DataError, r"variances in 'vi' must be positive"),
    ("meta vi numerically zero", _meta(data=TEACHERS.assign(vi=1e-302)), bh.DataError,
     r"variances in 'vi' are numerically zero in rows 0, 1, 2.*e.g. 1e-302"),
    ("HLM known variance numerically zero", lambda tmp: bh.HLM("yi ~ 1 + (1 | study)", TEACHERS.assign(
        vi=TEACHERS["vi"].where(TEACHERS.index != 4, 1e-20)), known_variance="vi"), bh.DataError,
     r"numerically zero in row 4 \(e.g. 1e-20"),
    ("meta vi infinite", _meta(data=TEACHERS.assign(vi=np.inf)), bh.DataError, r"'vi' has infinite values"),
    ("meta vi text", _meta(data=TEACHERS.assign(vi="0.1")), bh.DataError, r"'vi' must be numeric"),
    ("meta collinear moderators", _meta("yi ~ weeks + w2", TEACHERS.assign(w2=TEACHERS["weeks"] * 2)),
     bh.DataError, r"\['weeks', 'w2'\] are perfectly collinear"),
    ("meta nearly collinear moderators", _meta("yi ~ weeks + w2", TEACHERS.assign(  # was LinAlgError
        w2=TEACHERS["weeks"] * 2 + 1e-12 * np.arange(19))), bh.DataError,
     r"moderators \['weeks', 'w2'\] are almost collinear \(condition number 6.2e\+12"),
    ("meta one study", _meta(data=TEACHERS.iloc[:1]), bh.DataError, r"'yi' is constant"),
    ("meta as many moderators as studies", _meta("yi ~ weeks", TEACHERS.iloc[:2]), bh.FormulaError,
     r"random intercept of 'study' is absorbed by the fixed effects"),
    ("meta vi missing with missing='raise'", _meta(data=TEACHERS.assign(vi=TEACHERS["vi"].where(
        TEACHERS.index != 2)), missing="raise"), bh.DataError, r"Missing values in vi .*row 2"),
    ("meta method misspelt", _meta(method="dll"), OPTION, r"Unknown method 'dll'. Did you mean 'dl'"),
    ("meta Bayes option without Bayes", _meta(draws=10), OPTION, r"'draws' applies to method='bayes' only"),
    ("meta Bayes tune=0", _meta(method="bayes", tune=0), OPTION, r"tune=0: give a positive whole number"),
    ("meta Bayes seed 2**64", _meta(method="bayes", random_seed=2**64), OPTION, r"random_seed=18446744073709551616"),
    ("meta prediction text", lambda tmp: bh.meta("yi ~ weeks", TEACHERS, vi="vi").prediction({"weeks": "two"}),
     OPTION, r"moderators=\{'weeks': 'two'\}: give a number for each moderator"),
    ("meta effects whose squares overflow", _meta(data=TEACHERS.assign(yi=TEACHERS["yi"] * 1e200)), bh.DataError,
     r"effects 'yi' reach 1.18e\+200: their squares overflow"),  # was OverflowError (REML) or LinAlgError (DL)
    ("meta DL effects whose squares overflow", _meta(data=TEACHERS.assign(yi=TEACHERS["yi"] * 1e200), method="dl"),
     bh.DataError, r"effects 'yi' reach 1.18e\+200"),
    ("meta variances whose reciprocals overflow", _meta(data=TEACHERS.assign(vi=1e-320)), bh.DataError,
     r"sampling variances in 'vi' are numerically zero in rows 0, 1, 2.*e.g. 9.99989e-321"),
    ("meta prediction level above 1", lambda tmp: bh.meta("yi ~ 1", TEACHERS, vi="vi").prediction(level=1.5),
     OPTION, r"level=1.5: give the interval's coverage as a number between 0 and 1"),  # was NaN intervals
    ("meta prediction level text", lambda tmp: bh.meta("yi ~ 1", TEACHERS, vi="vi").prediction(level="95%"),
     OPTION, r"level='95%': give the interval's coverage"),
    ("meta prediction unknown moderator", lambda tmp: bh.meta("yi ~ weeks", TEACHERS, vi="vi").prediction(
        {"week": 1}), OPTION, r"'week' is not a moderator of this model. Did you mean 'weeks'"),
    # --- meta_mv(): multivariate meta-analysis ------------------------------------------------------------
    ("meta_mv effect text", _meta_mv(_berkey_with(3, "yi", "n/a")), bh.DataError,
     r"effect column 'yi' is not numeric: row 3 hold 'n/a'"),
    ("meta_mv effect infinite", _meta_mv(_berkey_with(4, "yi", np.inf)), bh.DataError,
     r"effect column 'yi' has missing or infinite values in row 4"),
    ("meta_mv moderator text", _meta_mv(BERKEY.assign(m="a"), mods=["m"]), bh.DataError,
     r"moderator column 'm' is not numeric.*code it as 0/1 columns"),
    ("meta_mv moderator infinite", _meta_mv(BERKEY.assign(m=np.inf), mods=["m"]), bh.DataError,
     r"moderator column 'm' has missing or infinite"),
    ("meta_mv covariance text", _meta_mv(_berkey_with(2, "v1i", "x")), bh.DataError,
     r"covariance column 'v1i' is not numeric: row 2"),
    ("meta_mv covariance missing", _meta_mv(_berkey_with(1, "v1i", np.nan)), bh.DataError,
     r"sampling covariances of row 1 have missing or infinite values"),
    ("meta_mv V array with NaN", _meta_mv(V=np.where(np.eye(10) > 0, np.nan, 0.0)), bh.DataError,
     r"sampling covariances of rows 0, 1, 2, 3, 4 and 5 more have missing"),
    ("meta_mv V array of text", _meta_mv(V=np.full((10, 10), "a")), bh.DataError,
     r"V must be an n x n array of numbers"),
    ("meta_mv V wrong shape", _meta_mv(V=np.eye(3)), bh.DataError, r"V must be an 10 x 10 array.*\(3, 3\)"),
    ("meta_mv V between studies", _meta_mv(V=np.full((10, 10), 0.01) + np.eye(10)), bh.DataError,
     r"non-zero covariances between effects of different studies"),
    ("meta_mv V not positive definite", _meta_mv(V=-np.eye(10)), bh.DataError, r"V is not positive definite"),
    ("meta_mv vi zero", _meta_mv(BERKEY.assign(vi=0.0), V=None, vi="vi", rho=0.3), bh.DataError,
     r"sampling variances in 'vi' must be positive; rows 0, 1, 2, 3, 4 and 5 more hold 0"),
    ("meta_mv vi negative", _meta_mv(BERKEY.assign(vi=-0.01), V=None, vi="vi", rho=0.3), bh.DataError,
     r"sampling variances in 'vi' must be positive.*-0.01"),
    ("meta_mv vi missing", _meta_mv(BERKEY.assign(vi=[0.01] * 9 + [np.nan]), V=None, vi="vi", rho=0.3),
     bh.DataError, r"sampling variance column 'vi' has missing or infinite values in row 9"),
    ("meta_mv vi text", _meta_mv(BERKEY.assign(vi="big"), V=None, vi="vi", rho=0.3), bh.DataError,
     r"sampling variance column 'vi' is not numeric"),
    ("meta_mv rho text", _meta_mv(BERKEY.assign(vi=0.01), V=None, vi="vi", rho="0.5"), OPTION,
     r"rho='0.5': with vi= give the within-study correlation"),
    ("meta_mv rho 1", _meta_mv(BERKEY.assign(vi=0.01), V=None, vi="vi", rho=1.0), OPTION, r"rho=1.0:.*-1 < rho < 1"),
    ("meta_mv both V and vi", _meta_mv(BERKEY.assign(vi=0.01), vi="vi", rho=0.5), OPTION, r"either as V="),
    ("meta_mv empty", _meta_mv(BERKEY.iloc[:0]), bh.DataError, r"The data frame is empty: meta_mv\(\) needs one "
                                                               r"row per reported effect"),
    ("meta_mv one study", _meta_mv(BERKEY.iloc[:2]), bh.DataError, r"1 studies with 2 effects cannot estimate 2 "
                                                                   r"fixed effects"),
    ("meta_mv data a list", _meta_mv([1, 2]), bh.DataError, r"meta_mv\(\) takes a pandas DataFrame.*got list"),
    ("meta_mv column absent", lambda tmp: bh.meta_mv(BERKEY, "y", "outcome", "trial", V=V_COLUMNS), bh.DataError,
     r"'y' is not a column of the data. Did you mean 'yi'"),
    ("meta_mv repeated outcome", _meta_mv(pd.concat([BERKEY, BERKEY.iloc[:1]], ignore_index=True)), bh.DataError,
     r"row 10 repeat an outcome within a study"),
    ("meta_mv collinear moderators", _meta_mv(BERKEY.assign(y2=BERKEY["year"] * 2), mods=["year", "y2"]),
     bh.DataError, r"'AL:y2', 'PD:y2'\] are not identifiable"),
    ("meta_mv effects whose squares overflow", _meta_mv(BERKEY.assign(yi=BERKEY["yi"] * 1e200)), bh.DataError,
     r"effects 'yi' reach 6e\+199: their squares overflow"),  # was LinAlgError: Singular matrix
    ("meta_mv maxiter zero", _meta_mv(maxiter=0), OPTION, r"maxiter=0: give a positive whole number"),
    ("meta_mv maxiter text", _meta_mv(maxiter="many"), OPTION, r"maxiter='many': give a positive whole number"),
    ("meta_mv method misspelt", _meta_mv(method="bays"), OPTION, r"Unknown method 'bays'"),
    ("meta_mv Bayes draws float", _meta_mv(method="bayes", draws=200.0), OPTION, r"draws=200.0: give a positive "
                                                                                 r"whole number"),
    ("meta_mv Bayes tune=0", _meta_mv(method="bayes", tune=0), OPTION, r"tune=0: give a positive whole number"),
    ("meta_mv Bayes option misspelt", _meta_mv(method="bayes", chain=2), OPTION, r"Unknown option 'chain' for "
                                                                                 r"method='bayes'"),
    # --- HLM(), from_levels(), datasets, model files -------------------------------------------------------
    ("HLM two tildes", lambda tmp: bh.HLM("y ~ x ~ g + (1 | g)", DATA), bh.FormulaError, r"more than one '~'"),
    ("HLM data a list", lambda tmp: bh.HLM("y ~ x + (1 | g)", [1, 2]), bh.DataError, r"data must be a pandas "
                                                                                     r"DataFrame; got list"),
    ("HLM group-centred level-2 predictor", lambda tmp: bh.HLM(  # was numpy's "zero-size array" ValueError
        "y ~ w + (1 | g)", DATA.assign(w=np.repeat(RNG.normal(size=5), 6)), center={"w": "group"}), bh.DataError,
     r"center\['w'\] = 'group': 'w' takes one value in each group.*Centre it on the grand mean"),
    ("HLM random slope of a group-centred level-2 variable", lambda tmp: bh.HLM(
        "y ~ x + (w | g)", DATA.assign(w=np.repeat(RNG.normal(size=5), 6)), center={"w": "group"}),
     bh.DataError, r"center\['w'\] = 'group': 'w' takes one value in each group"),
    ("HLM group-centred constant", lambda tmp: bh.HLM("y ~ w + (1 | g)", DATA.assign(w=3.0),
                                                      center={"w": "group"}), bh.DataError,
     r"center\['w'\] = 'group': 'w' takes one value in each group"),
    ("HLM more random coefficients than rows", lambda tmp: bh.HLM("y ~ 1 + (C(x) | g)", DATA).fit(), bh.DataError,
     r"'g' has 5 groups x 30 random coefficients = 150 random effects for 30 rows"),
    ("fixed column tiny beside the intercept", lambda tmp: check_rank(np.array([[1.0, 0.0], [0.0, 1e-17]]), 30,
                                                                      ("(Intercept)", "w")),
     bh.DataError, r"Fixed-effect columns \['w'\] are perfectly collinear"),  # was the "zero-size array" error
    ("from_levels equation for an unknown coefficient", lambda tmp: bh.HLM.from_levels(
        "y ~ x", {"slope": "~ 1"}, groups="g", data=DATA), bh.FormulaError,
     r"equation for 'slope', which is not a level-1 coefficient"),
    ("from_levels level2 text", lambda tmp: bh.HLM.from_levels("y ~ x", "~ 1", groups="g", data=DATA),
     bh.FormulaError, r"level2 maps coefficients to equations"),
    ("datasets.load misspelt", lambda tmp: bh.datasets.load("hsbb"), OPTION, r"No bundled dataset called 'hsbb'. "
                                                                             r"Did you mean 'hsb'"),
    ("datasets.load a number", lambda tmp: bh.datasets.load(3), OPTION, r"A dataset is named by text, e.g. 'hsb'; "
                                                                           r"got 3 \(int\)"),
    ("load_model absent", lambda tmp: bh.load_model(tmp / "absent.toml"), OPTION, r"No model file at .*absent"),
    ("model file not TOML", _model_file("formula = "), OPTION, r"m.toml: not valid TOML"),
    ("model file fit as text", _model_file('formula = "y ~ x + (1|g)"\ndataset = "hsb"\nfit = "reml"\n'), OPTION,
     r"'fit' must be a table"),
    ("model file empty CSV", _model_file('formula = "y ~ x + (1|g)"\ndata = "d.csv"\n', b""), bh.DataError,
     r"data = 'd.csv' is empty"),
    ("model file CSV not UTF-8", _model_file('formula = "y ~ x + (1|g)"\ndata = "d.csv"\n', b"y,x\n\xff\xfe,1\n"),
     bh.DataError, r"data = 'd.csv' is not UTF-8"),
    ("model file CSV absent", _model_file('formula = "y ~ x + (1|g)"\ndata = "d.csv"\n'), OPTION,
     r"data = 'd.csv': no such file"),
    # --- load_fit(): files that are not fits ----------------------------------------------------------------
    ("load_fit absent", lambda tmp: bh.load_fit(tmp / "absent.nc"), OPTION, r"load_fit: no file .*absent.nc"),
    ("load_fit a folder", lambda tmp: bh.load_fit(tmp), OPTION, r"load_fit: no file"),
    ("load_fit text", _file(b"school,score\n1,2\n"), FitFormatError, r"fit.nc' is not a netCDF file written by "
                                                                    r"fit.save"),
    ("load_fit empty", _file(b""), FitFormatError, r"is not a netCDF file written by fit.save"),
    ("load_fit random bytes", _file(np.random.default_rng(3).bytes(4096)), FitFormatError,
     r"is not a netCDF file written by fit.save"),
    ("load_fit HDF5 signature then junk", _file(b"\x89HDF\r\n\x1a\n" + bytes(2000)), FitFormatError,
     r"is not a netCDF file written by fit.save"),
    ("load_fit netCDF3 from another program", _other_netcdf("scipy"), FitFormatError,
     r"is not a netCDF file written by fit.save"),
    ("load_fit netCDF4 from another program", _other_netcdf("h5netcdf"), FitFormatError,
     r"has no bayeshlm format version"),
]


@pytest.mark.parametrize("make, error, message", [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_bad_input_raises_a_bayeshlm_error_naming_the_culprit(make, error, message, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # REML boundary notes of the meta-analyses fitted before the option checks
        with pytest.raises(error, match=message) as caught:
            make(tmp_path)
    assert isinstance(caught.value, bh.InputError | SaveError)


def test_meta_numbers_the_studies_whatever_column_names_are_taken():
    """The numbering column is a free name: StopIteration when study, study_id and meta_study all existed."""
    taken = TEACHERS.drop(columns="study").assign(study=1, study_id=2, meta_study=3)
    fit = bh.meta("yi ~ 1", taken, vi="vi")
    assert fit.study_effects.index.name == "study_1" and list(fit.study_effects.index) == list(range(1, 20))
    assert fit.tau2 == pytest.approx(bh.meta("yi ~ 1", TEACHERS, vi="vi", study="study").tau2, rel=1e-10)


# --- interrupted sampling and undefined diagnostics -----------------------------------------------------------
def test_a_partial_trace_is_not_a_fit():
    """PyMC returns the draws made before Ctrl-C; a posterior with fewer draws or chains than asked is refused."""
    def tree(chains, draws):
        return xr.DataTree.from_dict({"posterior": xr.Dataset({"beta": (("chain", "draw"),
                                                                         np.zeros((chains, draws)))})})

    check_complete(tree(2, 100), draws=100, chains=2)
    with pytest.raises(KeyboardInterrupt, match=r"interrupted \(2 chains x 37 of 2 x 100 draws made\)"):
        check_complete(tree(2, 37), draws=100, chains=2)
    with pytest.raises(KeyboardInterrupt, match=r"interrupted \(1 chains x 100 of 2 x 100"):
        check_complete(tree(1, 100), draws=100, chains=2)


@pytest.mark.sampling
@pytest.mark.parametrize("front_end", ["nutpie's core (bayes.nuts)", "nutpie.sample"])
def test_interrupted_nutpie_sampling_raises_instead_of_returning_nan_draws(front_end, monkeypatch):
    """Ctrl-C while nutpie samples (simulated where the wait for the sampler receives it, after 0.3 s of a long
    run): the old code let nutpie return the draws so far, NaN-padded, as a fit with no message (measured: 4% of
    the draws NaN, every diagnostic NaN); now the interrupt reaches the caller and the sampler is stopped. Both
    ways of running nutpie: its core driven by bayes.nuts (the default) and nutpie.sample (other releases)."""
    from bayeshlm.bayes import nuts

    def interrupted_wait(*args, **kwargs):
        time.sleep(0.3)
        raise KeyboardInterrupt

    if front_end == "nutpie.sample":
        monkeypatch.setattr(nuts, "use_core", lambda progressbar: False)
        monkeypatch.setattr(importlib.import_module("nutpie.sample")._BackgroundSampler, "wait", interrupted_wait)
    else:
        monkeypatch.setattr(nuts, "_wait", interrupted_wait)
    schools = bh.datasets.load("eight_schools").assign(V=lambda d: d["sigma"] ** 2)
    model = bh.HLM("y ~ 1 + (1 | school)", schools, known_variance="V")
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt, match="Sampling was interrupted; no fit was made"):
        model.fit("bayes", draws=200_000, tune=50, chains=1, random_seed=1)
    assert time.perf_counter() - start < 30


def _stub_tree(values: np.ndarray) -> xr.DataTree:
    chains, draws = values.shape
    return xr.DataTree.from_dict({
        "posterior": xr.Dataset({"beta": (("chain", "draw", "fixed"), values[..., None])}),
        "sample_stats": xr.Dataset({"diverging": (("chain", "draw"), np.zeros((chains, draws), bool)),
                                    "energy": (("chain", "draw"), np.random.default_rng(0).normal(
                                        size=(chains, draws)))})})


@pytest.mark.parametrize("values, undefined", [
    (np.random.default_rng(1).normal(size=(2, 1)), "R-hat, bulk ESS, tail ESS, energy BFMI"),
    (np.random.default_rng(1).normal(size=(4, 3)), "R-hat, bulk ESS, tail ESS"),
    (np.ones((2, 50)), "R-hat, bulk ESS, tail ESS"),
])
def test_undefined_diagnostics_are_reported_in_words(values, undefined):
    """draws=1 (or 3 per chain, or draws that never change) left R-hat and ESS NaN with no message at all."""
    diagnostics, messages = diagnose(_stub_tree(values), ["beta"], chains=values.shape[0])
    assert np.isnan(diagnostics["min_ess_bulk"])
    assert any(m.startswith(f"The convergence diagnostics {undefined} could not be computed (NaN) from "
                            f"{values.shape[1]} draw") for m in messages), messages


@pytest.mark.parametrize("method, rtol, atol", [("dl", 1e-6, 1e-9), ("reml", 1e-4, 1e-5)])
def test_meta_regression_on_uncentred_year_and_year_squared_matches_the_centred_one(method, rtol, atol):
    """Moderators year and year^2 (years 1999.8-2000.2): X'WX has a condition number near 1e19, and inverting it
    gave wrong estimates with no error (a mean effect at 2000 of -0.0001 instead of -0.0776 on similar data).
    The same model with year - 2000 must give the same predictions, standard errors and study effects: to 1e-6
    by DerSimonian-Laird; by REML, whose tau^2 itself differs by 6e-5 between the two codings, to 1e-4 (and
    1e-5 absolute for effects near 0)."""
    rng = np.random.default_rng(0)
    year = 2000 + np.linspace(-0.17, 0.17, 19)
    data = pd.DataFrame({"yi": rng.normal(size=19) * 0.3, "vi": 0.05, "yr": year, "yr2": year**2,
                         "c": year - 2000, "c2": (year - 2000) ** 2, "study": range(19)})
    raw = bh.meta("yi ~ yr + yr2", data, vi="vi", study="study", method=method)
    centred = bh.meta("yi ~ c + c2", data, vi="vi", study="study", method=method)
    at_raw, at_centred = raw.prediction({"yr": 2000, "yr2": 2000**2}), centred.prediction({"c": 0, "c2": 0})
    np.testing.assert_allclose(at_raw.to_numpy(), at_centred.to_numpy(), rtol=rtol, atol=atol)
    for column in ("fitted", "eb", "eb_se"):
        np.testing.assert_allclose(raw.study_effects[column], centred.study_effects[column], rtol=rtol, atol=atol)


@pytest.mark.parametrize("shift", [0.0, 1e6])
def test_meta_mv_estimates_do_not_depend_on_where_a_moderator_is_centred(shift):
    """berkey with the moderator year as given (1979-1988) or shifted by 1e6 must give the centred fit's T,
    deviance and slopes: shifted by 1e6 the old code returned tau^2 = (0.089, 0.170) instead of (0.041, 0.020)
    (X'Sigma^-1 X too ill-conditioned), and even unshifted it agreed only to 1e-5."""
    centred = bh.meta_mv(BERKEY.assign(yr=BERKEY["year"] - BERKEY["year"].mean()), "yi", "outcome", "trial",
                         V=V_COLUMNS, mods=["yr"])
    given = bh.meta_mv(BERKEY.assign(yr=BERKEY["year"] + shift), "yi", "outcome", "trial", V=V_COLUMNS,
                       mods=["yr"])
    np.testing.assert_allclose(given.tau2, centred.tau2, rtol=1e-6)
    assert given.deviance == pytest.approx(centred.deviance, rel=1e-10)
    slopes = ["AL:yr", "PD:yr"]
    np.testing.assert_allclose(given.fixed_effects.loc[slopes, ["estimate", "se"]],
                               centred.fixed_effects.loc[slopes, ["estimate", "se"]], rtol=1e-6)
    np.testing.assert_allclose(given.study_effects["eb"], centred.study_effects["eb"], rtol=1e-6, atol=1e-9)
