"""Full Bayes for binary, binomial and count outcomes (issue 24): the compiled log density against the PyMC graph,
agreement with the Laplace/glmer fit under flat priors, the result contract, reproducibility, and refusals.

Sampling tests use the compiled kernel with few draws: the C extension built at install
(bayeshlm/bayes/_glmm_kernel.c), nothing to compile; without it, Numba's (compiled on the first run on a machine,
about a minute, then loaded from its on-disk cache).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm.bayes import Prior
from bayeshlm.bayes.glmm import (
    build_kernel,
    centre_weights,
    choose_parameterization,
    conditional_centring_default,
    default_target_accept,
    fixed_effect_shift,
    kernel_coordinates,
    laplace_reliability,
    laplace_start,
    latent_scale,
    latent_scales_default,
    partial_weights_default,
    resolve_glmm_priors,
    standardising_map,
)
from bayeshlm.bayes.glmm_kernel import log_density_and_gradient, reported
from bayeshlm.errors import OptionError
from bayeshlm.results.contract import contract_problems

REFERENCE = Path(__file__).parent / "reference" / "glmm"
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


def cbpp_model():
    return bh.HLM(CBPP, bh.datasets.load("cbpp"), family="binomial")


def toy(family="poisson", seed=0, J=8, n=12):
    """Counts with a random intercept and two correlated slopes per g, and a crossed factor h."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), n)
    h = np.tile(np.arange(4), J * n // 4)
    x, x2 = rng.normal(size=J * n), rng.normal(size=J * n)
    years = rng.uniform(0.5, 2.0, J * n)
    eta = 0.3 + 0.4 * x - 0.2 * x2 + rng.normal(scale=0.5, size=J)[g] + rng.normal(scale=0.3, size=4)[h]
    y = rng.poisson(years * np.exp(eta))
    frame = pd.DataFrame({"y": y, "x": x, "x2": x2, "g": g.astype(str), "h": h.astype(str), "years": years})
    return frame


def bernoulli_duplicates(seed=4, J=10, n=30):
    """Bernoulli rows with a binary x and a group-level w: many rows share their linear predictor."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), n)
    x = rng.integers(0, 2, J * n).astype(float)
    w = rng.normal(size=J)
    eta = -0.3 + 0.8 * x + 0.5 * w[g] + rng.normal(scale=0.7, size=J)[g]
    y = rng.binomial(1, 1.0 / (1.0 + np.exp(-eta)))
    return pd.DataFrame({"y": y, "x": x, "w": w[g], "g": g.astype(str)})


def verbagg_shape(seed=0, persons=12, items=6):
    """Crossed Bernoulli responses of persons (with a numeric and a binary predictor) to items (of three types
    and two situations), VerbAgg's structure in small."""
    rng = np.random.default_rng(seed)
    person, item = np.repeat(np.arange(persons), items), np.tile(np.arange(items), persons)
    anger = rng.normal(size=persons)[person]
    eta = -0.2 + 0.3 * anger + rng.normal(size=persons)[person] + 0.5 * rng.normal(size=items)[item]
    return pd.DataFrame({"y": rng.binomial(1, 1.0 / (1.0 + np.exp(-eta))), "anger": anger,
                         "gender": (rng.random(persons) < 0.5).astype(float)[person],
                         "btype": np.array(["curse", "scold", "shout"])[item % 3],
                         "situ": np.array(["other", "self"])[item // 3 % 2],
                         "id": person.astype(str), "item": item.astype(str)})


def with_observation_level(frame):
    """``frame`` with obs, one level per row (an observation-level effect)."""
    return frame.assign(obs=[f"o{i:03d}" for i in range(len(frame))])


def toy_with_group_predictor():
    """:func:`toy` (seed 1) with w, a predictor constant within g."""
    frame = toy(seed=1)
    frame["w"] = 0.3 * frame["g"].astype(int) - 1.0
    return frame


CASES = {
    # binomial with trials (cbind), centred herds, an Exponential tau prior and a flat prior on one coefficient
    "cbpp": (cbpp_model, {"tau_herd": Prior("Exponential", lam=1.0), "period[T.2]": Prior("Flat")},
             {"herd": "centred"}),
    # Poisson with exposure, three correlated random coefficients (LKJ with q = 3) and a crossed factor
    "poisson_crossed": (lambda: bh.HLM("y ~ x + x2 + (1 + x + x2 | g) + (1 | h)", toy(), family="poisson",
                                       exposure="years"), {"corr_g": 1.5}, {"g": "centred", "h": "non-centred"}),
    # negative binomial, flat priors (on the variances: tau2 is the graph's variable)
    "negative_binomial": (lambda: bh.HLM("y ~ x + (1 | g)", toy(seed=1), family="negative_binomial"), "flat",
                          {"g": "non-centred"}),
    # Bernoulli rows merged into binomial ones (kernel only: 300 rows, 20 distinct), groups centred
    "bernoulli_merged": (lambda: bh.HLM("y ~ x + w + (1 | g)", bernoulli_duplicates(), family="bernoulli"), None,
                         {"g": "centred"}),
    # the shift of the fixed effects: VerbAgg's shape (crossed intercepts, person- and item-level predictors)
    "verbagg_shape": (lambda: bh.HLM("y ~ anger + gender + btype + situ + (1 | id) + (1 | item)", verbagg_shape(),
                                     family="bernoulli"), None, {"id": "non-centred", "item": "non-centred"}),
    # a correlated (x | g), non-centred: its intercept shifts (Intercept) and the group-level w
    "bernoulli_slope": (lambda: bh.HLM("y ~ x + w + (x | g)", bernoulli_duplicates(), family="bernoulli"), None,
                        {"g": "non-centred"}),
    # persons centred (on beta, which the items shift), items non-centred and shifted
    "verbagg_shape_centred_persons": (lambda: bh.HLM("y ~ anger + gender + btype + situ + (1 | id) + (1 | item)",
                                                     verbagg_shape(), family="bernoulli"), None,
                                      {"id": "centred", "item": "non-centred"}),
    # items centred on their level-2 model (Intercept) + btype + situ, around the sampled beta'; persons shifted
    "verbagg_shape_centred_items": (lambda: bh.HLM("y ~ anger + gender + btype + situ + (1 | id) + (1 | item)",
                                                   verbagg_shape(), family="bernoulli"), None,
                                    {"item": "centred", "id": "non-centred"}),
    # as the last, the persons' z scaled along their group-level columns and partially centred (GEOMETRY)
    "verbagg_shape_latent_scaled": (lambda: bh.HLM("y ~ anger + gender + btype + situ + (1 | id) + (1 | item)",
                                                   verbagg_shape(), family="bernoulli"), None,
                                    {"item": "centred", "id": "non-centred"}),
    # negative binomial with flat priors (tau2 on the variance: h = 1/2), g shifted, scaled, partially centred
    "negative_binomial_flat_partial": (lambda: bh.HLM("y ~ x + w + (1 | g)", toy_with_group_predictor(),
                                                      family="negative_binomial"), "flat", {"g": "non-centred"}),
    # negative binomial, shifted onto (Intercept) and a predictor w of g's groups
    "negative_binomial_shifted": (lambda: bh.HLM("y ~ x + w + (1 | g)", toy_with_group_predictor(),
                                                 family="negative_binomial"), None, {"g": "non-centred"}),
    # an observation-level effect, conditionally centred (GEOMETRY), beside centred groups
    "poisson_olre_conditional": (lambda: bh.HLM("y ~ x + (1 | g) + (1 | obs)", with_observation_level(toy(J=6, n=8)),
                                                family="poisson", exposure="years"), None,
                                 {"g": "centred", "obs": "non-centred"}),
    # binomial with trials, flat priors (tau2 on the variance: d log tau / d log tau2 = 1/2), conditionally centred
    "binomial_olre_conditional_flat": (lambda: bh.HLM(CBPP + " + (1 | obs)",
                                                      with_observation_level(bh.datasets.load("cbpp")),
                                                      family="binomial"), "flat",
                                       {"herd": "non-centred", "obs": "non-centred"}),
}


def conditional_table(J, seed):
    """A (J, 2) table (c_j, h_j) of a conditional centring: c of either sign, h >= 0 (one 0: no information)."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.normal(0.0, 2.0, J), np.r_[0.0, rng.exponential(4.0, J - 1)]])


# (latent scales, partial-centring weights, conditional-centring tables) given to build_kernel (by default none:
# no Laplace fit)
GEOMETRY = {"verbagg_shape_latent_scaled": ({"id": 2.5}, {"id": 0.3}, None),
            "negative_binomial_flat_partial": ({"g": 1.5}, {"g": 0.4}, None),
            "poisson_olre_conditional": (None, None, {"obs": conditional_table(48, 1)}),
            "binomial_olre_conditional_flat": (None, None, {"obs": conditional_table(56, 2)})}


def log_jacobian(design, choice, case, names, x):
    """log |d graph point / d x| and its gradient in x: log|A| of the standardised fixed effects, rank(G) log
    lambda per scaled factor (z = z' + (lambda - 1) G P z'), -(1 - w) J log tau per partially centred factor
    (z = z' tau^-(1-w); its coordinate is log tau, or log tau^2 = 2 log tau), -sum_j log(1 + tau^2 h_j) / 2 per
    conditionally centred factor (z_j = tau c_j / (1 + tau^2 h_j) + z'_j (1 + tau^2 h_j)^-1/2)."""
    scales, weights, conditional = (value or {} for value in GEOMETRY.get(case, (None, None, None)))
    value, gradient = np.linalg.slogdet(standardising_map(design.X))[1], np.zeros(len(x))
    offsets = dict(zip([name for name, _ in names], np.cumsum([0] + [int(np.prod(s)) for _, s in names])))
    for name, table in conditional.items():
        on_variance = f"tau2_{name}_log__" in offsets
        at = offsets[f"tau2_{name}_log__" if on_variance else f"tau_{name}_log__"]
        v = np.exp(x[at] * (1.0 if on_variance else 2.0)) * table[:, 1]  # tau^2 h_j
        value -= 0.5 * np.sum(np.log1p(v))
        gradient[at] -= np.sum(v / (1.0 + v)) * (0.5 if on_variance else 1.0)
    for name, entries in fixed_effect_shift(design, choice).items():
        f = design.factor(name)
        first = np.unique(f.codes, return_index=True)[1]
        G = design.X[np.ix_(first, sorted({k for k, _, _ in entries}))]
        value += np.linalg.matrix_rank(G) * np.log(scales.get(name, 1.0))
        if name in weights:
            on_variance = f"tau2_{name}_log__" in offsets
            at = offsets[f"tau2_{name}_log__" if on_variance else f"tau_{name}_log__"]
            slope = -(1.0 - weights[name]) * f.n_groups * (0.5 if on_variance else 1.0)
            value += slope * x[at]
            gradient[at] += slope
    return value, gradient


def shifted_beta(kernel, design, x):
    """beta at the kernel's coordinates x by the definition (glmm_kernel docstring): A x[:p] - sum of P'u[:, a]
    over the shift entries of :func:`fixed_effect_shift`, with u the reported effects."""
    A, p = standardising_map(design.X), design.n_fixed
    out = reported(kernel, x)
    beta = A @ x[:p]
    for name, entries in fixed_effect_shift(design, choice_of(kernel, design)).items():
        for k, a, weights in entries:
            beta[k] -= weights @ out[f"u_{name}"][:, a]
    return beta


def choice_of(kernel, design):
    return {f.name: "centred" if any(n == f"coef_{f.name}" for n, _, _ in kernel.layout) else "non-centred"
            for f in design.factors}


def graph_point(kernel, design, names, x):
    """The PyMC graph's value variables at the kernel's coordinates x, flat in the order of ``names``: beta (A x[:p]
    shifted by the non-centred effects, :func:`shifted_beta`), a centred factor's b and a non-centred factor's z as
    the kernel reports them (b' + C (beta - beta'), z' with the group-level directions scaled: glmm_kernel's
    docstring), the other coordinates as they are."""
    out = reported(kernel, x)
    flat, at = [], 0
    for name, shape_ in names:
        size = int(np.prod(shape_))
        if name.startswith("beta"):  # "beta", or "beta[name]" when the priors differ
            flat.append(np.ravel(out["beta"])[at:at + size])
        elif name.startswith(("coef_", "z_")):
            flat.append(np.ravel(out[name]))
        else:
            flat.append(x[at:at + size])
        at += size
    return np.concatenate(flat)


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_equals_pymc_graph(case):
    """Log density (up to the constant log-Jacobian, :func:`log_jacobian`) and gradient of the compiled kernel
    equal PyMC's at random points, every normalising constant included: the graph at the kernel's beta (shifted by
    the non-centred effects, :func:`shifted_beta`), the graph's b of centred factors (the kernel samples b' = b +
    C (beta' - beta)), the graph's z of scaled factors and the other coordinates as they are (:func:`graph_point`),
    its gradient
    carried to the kernel's coordinates by the chain rule (d point / dx by central differences of the reported
    values, a smooth map; steps 1e-5)."""
    make, priors, choice = CASES[case]
    model = make()
    design, outcome = model.design, model.outcome
    prior_set, shape = resolve_glmm_priors(design, outcome, priors)
    kernel = build_kernel(design, outcome, prior_set, shape, choice, None, *GEOMETRY.get(case, (None, None, None)))
    if case == "bernoulli_merged":  # 300 rows, 20 distinct (group x binary x)
        assert kernel.n_rows == 20 < design.n_obs
    graph = bh.bayes.glmm.glmm_pymc_model(design, outcome, priors, choice=choice)
    logp, dlogp = graph.compile_logp(), graph.compile_dlogp()
    names = kernel_coordinates(design, prior_set, shape, choice)
    A = standardising_map(design.X)
    p = design.n_fixed
    evaluate = log_density_and_gradient(kernel)
    rng = np.random.default_rng(3)
    for _ in range(3):
        x = kernel.start + 0.4 * rng.standard_normal(kernel.n_dim)
        lp, grad = evaluate(x)
        np.testing.assert_allclose(reported(kernel, x)["beta"], shifted_beta(kernel, design, x), rtol=1e-12,
                                   atol=1e-14)
        flat_point = graph_point(kernel, design, names, x)
        point, at = {}, 0
        for name, shape_ in names:
            size = int(np.prod(shape_))
            point[name] = flat_point[at:at + size].reshape(shape_)
            at += size
        assert at == kernel.n_dim
        graph_grad, at = {}, 0
        flat = dlogp(point)
        for var in graph.value_vars:
            size = int(np.prod(point[var.name].shape))
            graph_grad[var.name] = flat[at:at + size]
            at += size
        expected = np.concatenate([graph_grad[name] for name, _ in names])
        steps = np.eye(kernel.n_dim) * 1e-5
        d_point = np.array([(graph_point(kernel, design, names, x + e) - graph_point(kernel, design, names, x - e))
                            / 2e-5 for e in steps])  # (n_dim, n_dim): row m is d point / d x_m
        np.testing.assert_allclose(d_point[:p, :p], A.T, rtol=1e-9, atol=1e-9)  # beta' = A x[:p]
        # the map to the graph's coordinates has the Jacobian log_jacobian says (|A|, lambda^rank(G) per scaled
        # factor, tau^-(1-w)J per partially centred one, unit-diagonal triangular otherwise), which the kernel
        # adds: it samples the graph's posterior
        log_det, d_log_det = log_jacobian(design, choice, case, names, x)
        assert np.linalg.slogdet(d_point)[1] == pytest.approx(log_det, abs=1e-6)
        assert lp - log_det == pytest.approx(float(logp(point)), abs=1e-7)
        np.testing.assert_allclose(grad, d_point @ expected + d_log_det, rtol=1e-8, atol=1e-8)  # chain rule


@pytest.mark.parametrize("case", ["verbagg_shape", "verbagg_shape_centred_items"])
def test_the_shift_takes_the_ridge_of_group_level_coefficients_out_of_the_sampled_coordinates(case):
    """VerbAgg's shape, persons non-centred: they shift (Intercept), anger and gender, with P G = I; items
    non-centred (shifting (Intercept) and the type and situation effects) or centred on their level-2 model.
    Moving the persons' fixed effects by d and their z by -G d / tau (every eta unchanged) leaves the sampled
    x[:p] and the items' coordinates where they are: the reported beta moves by d, centred items' b by C_j d
    (b' is sampled around beta', so the intercept is not counted twice), and the log density changes by the
    priors of z and beta alone."""
    make, priors, choice = CASES[case]
    model = make()
    design, outcome = model.design, model.outcome
    shift = fixed_effect_shift(design, choice)
    names = {f: [design.fixed_names[k] for k, a, _ in entries if a == 0] for f, entries in shift.items()}
    items = {"item": ["(Intercept)", "btype[T.scold]", "btype[T.shout]", "situ[T.self]"]}
    assert names == {"id": ["(Intercept)", "anger", "gender"], **(items if choice["item"] == "non-centred" else {})}
    prior_set, shape = resolve_glmm_priors(design, outcome, priors)
    kernel = build_kernel(design, outcome, prior_set, shape, choice, None)
    evaluate = log_density_and_gradient(kernel)
    p, persons = design.n_fixed, design.factor("id")
    columns = [k for k, _, _ in shift["id"]]
    first = np.unique(persons.codes, return_index=True)[1]
    G = design.X[np.ix_(first, columns)]
    P = np.array([weights for _, _, weights in shift["id"]])
    np.testing.assert_allclose(P @ G, np.eye(len(columns)), atol=1e-12)
    x = kernel.start + 0.4 * np.random.default_rng(8).standard_normal(kernel.n_dim)
    before = reported(kernel, x)
    d = np.array([0.3, -0.2, 0.5])
    moved = x.copy()
    z = x[p:p + persons.n_groups]
    moved[p:p + persons.n_groups] = z - G @ d / before["tau_id"][0]
    after = reported(kernel, moved)
    expected = before["beta"].copy()
    expected[columns] += d
    np.testing.assert_allclose(after["beta"], expected, rtol=1e-12, atol=1e-12)
    if choice["item"] == "centred":
        C = centre_weights(design, choice)["item"]  # (J, 1, p): c_j = C_j beta
        np.testing.assert_allclose(after["coef_item"], before["coef_item"] + C @ (after["beta"] - before["beta"]),
                                   rtol=1e-12, atol=1e-12)
    mu, sd = (np.array([prior_set.fixed[name].params[key] for name in design.fixed_names]) for key in ("mu", "sigma"))
    prior_change = (-0.5 * (np.sum(moved[p:p + persons.n_groups] ** 2) - np.sum(z**2))
                    - 0.5 * np.sum(((after["beta"] - mu) / sd) ** 2 - ((before["beta"] - mu) / sd) ** 2))
    assert evaluate(moved)[0] - evaluate(x)[0] == pytest.approx(prior_change, abs=1e-9)


def test_the_latent_scale_stretches_z_along_the_group_level_columns_only():
    """Persons shifted with lambda = 2.5 (VerbAgg's shape): the reported z is z' + 1.5 G P z' (P z = 2.5 P z',
    the rest of z' as it is), and the log density is the unscaled kernel's at that z plus rank(G) log 2.5 (the
    map's Jacobian), with the gradient carried back by the same symmetric map."""
    make, priors, choice = CASES["verbagg_shape_latent_scaled"]
    model = make()
    design, outcome = model.design, model.outcome
    prior_set, shape = resolve_glmm_priors(design, outcome, priors)
    scaled = build_kernel(design, outcome, prior_set, shape, choice, None, {"id": 2.5}, {"id": 1.0})
    plain = build_kernel(design, outcome, prior_set, shape, choice, None, {"id": 1.0}, {"id": 1.0})
    entries = fixed_effect_shift(design, choice)["id"]
    persons = design.factor("id")
    first = np.unique(persons.codes, return_index=True)[1]
    G = design.X[np.ix_(first, [k for k, _, _ in entries])]
    P = np.array([weights for _, _, weights in entries])
    x = scaled.start + 0.4 * np.random.default_rng(5).standard_normal(scaled.n_dim)
    assert design.factor_names[0] == "id"
    at = design.n_fixed  # the persons' z' first
    z_prime = x[at:at + persons.n_groups]
    z = reported(scaled, x)["z_id"][:, 0]
    np.testing.assert_allclose(P @ z, 2.5 * P @ z_prime, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(z - G @ P @ z, z_prime - G @ P @ z_prime, rtol=1e-12, atol=1e-12)
    moved = x.copy()
    moved[at:at + persons.n_groups] = z
    value, grad = log_density_and_gradient(scaled)(x)
    expected, expected_grad = log_density_and_gradient(plain)(moved)
    assert value == pytest.approx(expected + np.linalg.matrix_rank(G) * np.log(2.5), abs=1e-9)
    block = expected_grad[at:at + persons.n_groups]
    expected_grad[at:at + persons.n_groups] = block + 1.5 * G @ (P @ block)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-10)


def test_latent_scale_rule():
    """lambda = (1 - r)^-1/2 in [1, 3]: VerbAgg's persons (r 0.87) 2.78, none (1) at r = 0, capped at r = 0.95;
    the default applies to shifted factors only (centred items: none), as w = 1 - r of the partial centring."""
    assert latent_scale(0.8705) == pytest.approx(2.779, abs=1e-3)
    assert latent_scale(0.0) == 1.0 and latent_scale(0.95) == 3.0 and latent_scale(1.0) == 3.0
    make, _, choice = CASES["verbagg_shape_centred_items"]
    assert latent_scales_default(make().design, choice, None) == {"id": 1.0}  # no Laplace fit: reliability 0
    assert partial_weights_default(make().design, choice, None) == {"id": 1.0}  # w = 1 - r: non-centred


def test_gradient_matches_finite_differences_for_every_family_and_form():
    """Bernoulli (random slope, correlated, both parameterisations) and NB shape: central differences, 1e-5."""
    contraception = bh.datasets.load("contraception")
    contraception["use"] = (contraception["use"] == "Y").astype(int)
    models = [bh.HLM("use ~ age + urban + (urban | district)", contraception, family="bernoulli"),
              bh.HLM("y ~ x + (1 | g) + (1 | h)", toy(seed=2), family="negative_binomial")]
    for model in models:
        prior_set, shape = resolve_glmm_priors(model.design, model.outcome, None)
        for how in ("centred", "non-centred"):
            choice = {f.name: how for f in model.design.factors}
            kernel = build_kernel(model.design, model.outcome, prior_set, shape, choice, None)
            evaluate = log_density_and_gradient(kernel)
            x = kernel.start + 0.3 * np.random.default_rng(0).standard_normal(kernel.n_dim)
            grad = evaluate(x)[1]
            step = 1e-6
            numeric = np.array([(evaluate(x + e)[0] - evaluate(x - e)[0]) / (2 * step)
                                for e in np.eye(kernel.n_dim) * step])
            np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def cbpp_fit():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a divergence or low ESS would warn: none expected with the defaults
        return cbpp_model().fit(method="bayes", random_seed=11)


def test_fit_dispatches_and_samples_cbpp_without_divergences(cbpp_fit):
    """fit(method='bayes') on a binomial model (an OptionError before this engine): the compiled kernel,
    4 x 1000 draws, 0 divergences, R-hat < 1.01, non-centred herds (Laplace reliability 0.67 < 0.7)."""
    assert type(cbpp_fit).__name__ == "BayesGLMMFit"
    assert cbpp_fit.sampler["log_density"] == "compiled HGLM kernel (C extension)"
    assert cbpp_fit.sampler["shifted"] == {} == cbpp_fit.sampler["latent_scale"]  # no herd-level predictors
    assert cbpp_fit.sampler["partial_centring"] == {} == cbpp_fit.sampler["conditional_centring"]
    assert cbpp_fit.diagnostics["divergences"] == 0
    assert cbpp_fit.diagnostics["max_rhat"] < 1.01
    assert cbpp_fit.sampler["parameterization"] == {"herd": "non-centred"}
    assert cbpp_fit.sampler["reliability"]["herd"] == pytest.approx(0.666, abs=0.01)


def test_contract_tables(cbpp_fit):
    assert contract_problems("fixed_effects", cbpp_fit.fixed_effects) == []
    assert contract_problems("variance_components", cbpp_fit.variance_components) == []
    assert contract_problems("group_effects", cbpp_fit.group_effects("herd"), "herd") == []
    assert contract_problems("random_effects", cbpp_fit.random_effects("herd"), "herd") == []
    fixed = cbpp_fit.fixed_effects
    assert list(fixed.columns[4:7]) == ["r_hat", "ess_bulk", "ess_tail"]
    np.testing.assert_allclose(fixed["odds_ratio_lower"], np.exp(fixed["lower"]), rtol=1e-12)
    # group coefficient = intercept draw + u draw, so its posterior mean is the sum of the two means
    group = cbpp_fit.group_effects("herd")["estimate"].to_numpy()
    u = cbpp_fit.random_effects("herd")["estimate"].to_numpy()
    np.testing.assert_allclose(group, u + fixed.loc["(Intercept)", "estimate"], atol=1e-10)
    assert (cbpp_fit.group_effects("herd")["n"].to_numpy() == cbpp_model().design.factor("herd").group_sizes).all()


@pytest.mark.filterwarnings("ignore::bayeshlm.bayes.SamplingWarning")  # the 5-draw Poisson fit
def test_latent_icc_and_report(cbpp_fit):
    """ICC per draw tau00 / (tau00 + pi^2/3); the report prints every prior, the sampler and the diagnostics."""
    tau00 = cbpp_fit.covariance_draws("herd")[:, 0, 0]
    np.testing.assert_allclose(cbpp_fit.icc_draws("herd"), tau00 / (tau00 + np.pi**2 / 3), rtol=1e-12)
    assert cbpp_fit.icc()["estimate"] == pytest.approx(np.mean(tau00 / (tau00 + np.pi**2 / 3)))
    text = cbpp_fit.report()
    for name, prior in cbpp_fit.priors.items():
        assert f"{name}: {prior}" in text
    assert "0 divergences" in text and "compiled HGLM kernel" in text and "Latent-scale ICC" in text
    with pytest.raises(OptionError, match="latent-scale ICC"):
        bh.HLM("y ~ x + (1 | g)", toy(), family="poisson").fit(method="bayes", draws=5, tune=5, chains=1,
                                                               random_seed=1).icc()


@pytest.fixture(scope="module")
def cbpp_flat_fit():
    return cbpp_model().fit(method="bayes", priors="flat", random_seed=5, draws=1500)


def test_flat_priors_agree_with_laplace_and_glmer(cbpp_flat_fit):
    """With flat priors, the posterior means of the fixed effects lie within 0.25 posterior SD of glmer's Laplace
    estimates (tests/reference/glmm) and of this package's Laplace fit."""
    model = cbpp_model()
    table = cbpp_flat_fit.fixed_effects
    glmer = json.loads((REFERENCE / "glmm_reference.json").read_text())["cbpp_laplace"]["beta"]
    laplace = model.fit(method="ml").fixed_effects["estimate"].to_numpy()
    for reference in (np.array(glmer), laplace):
        z = np.abs(table["estimate"].to_numpy() - reference) / table["se"].to_numpy()
        assert z.max() < 0.25, z


def test_population_average_posterior_agrees_with_ml_integration(cbpp_flat_fit):
    """R&B 10.14-10.19 as a posterior: with flat priors, the posterior means of gamma* (integrated per draw) lie
    within 0.25 posterior SD of the ML fit's population_average(method='integrate') (measured: max 0.11 SD), are
    attenuated toward 0 against the unit-specific means, and max_draws thins evenly."""
    table = cbpp_flat_fit.population_average()
    assert contract_problems("fixed_effects", table) == []
    assert "integrated" in table.attrs["method"] and table.attrs["draws"] == 6000
    ml = cbpp_model().fit(method="ml").population_average(method="integrate")["population_average"]
    z = np.abs(table["estimate"] - ml) / table["se"]
    assert z.max() < 0.25, z
    assert (table["estimate"].abs() < table["unit_specific"].abs()).all()
    draws = cbpp_flat_fit.population_average_draws(max_draws=300)
    assert draws.shape == (300, 4)
    np.testing.assert_allclose(draws[-1], cbpp_flat_fit.population_average_draws()[-1], rtol=1e-12)
    zla = cbpp_flat_fit.population_average(method="closed_form")  # logit: labelled approximate
    assert zla.attrs["method"].startswith("approximate")
    c2, tau = (16 * np.sqrt(3) / (15 * np.pi)) ** 2, cbpp_flat_fit.covariance_draws("herd")[:, 0, 0]
    np.testing.assert_allclose(zla["estimate"], (cbpp_flat_fit._flat("beta") / np.sqrt(1 + c2 * tau)[:, None]).mean(0),
                               rtol=1e-12)


@pytest.mark.filterwarnings("ignore::bayeshlm.bayes.SamplingWarning")  # 2 x 100 draws
def test_population_average_log_link_is_exact_shift_per_draw():
    """Poisson with exposure and a random intercept: per draw, integration gives the intercept + tau / 2 and the
    slope unchanged, to 1e-10 (the closed form exp(tau/2) of E[exp(u)]); bad method / max_draws refused."""
    fit = bh.HLM("y ~ x + (1 | g)", toy(), family="poisson", exposure="years").fit(
        method="bayes", draws=100, tune=100, chains=2, random_seed=3)
    beta, tau00 = fit._flat("beta"), fit.covariance_draws("g")[:, 0, 0]
    expected = beta + np.c_[tau00 / 2, np.zeros(len(beta))]
    closed = fit.population_average_draws()  # the default for a log link with random intercepts
    integrated = fit.population_average_draws(method="integrate")
    np.testing.assert_allclose(closed, expected, rtol=0, atol=1e-14)
    np.testing.assert_allclose(integrated, expected, rtol=0, atol=1e-10)
    assert fit.population_average().attrs["method"].startswith("exact")
    with pytest.raises(OptionError, match="'closed_form'"):
        fit.population_average(method="closed form")
    with pytest.raises(OptionError, match="max_draws=1"):
        fit.population_average(max_draws=1)


def test_prior_predictive_shapes_seed_and_scale():
    """model.prior_predictive: per draw each row's probability mu and an outcome y drawn with it (pooled
    proportion within 0.1 of the trial-weighted mean of mu in every draw: 6 binomial SDs on cbpp's 842 trials);
    the same seed gives the same draws; counts give the mean count."""
    model = cbpp_model()
    first = model.prior_predictive(draws=300, random_seed=4)
    size = model.outcome.size
    assert first.mu.shape == first.y.shape == (300, 56) and first.pooled.shape == (300,)
    assert ((first.mu >= 0) & (first.mu <= 1)).all() and ((first.y >= 0) & (first.y <= size)).all()
    assert np.abs(first.pooled - (first.mu * size).sum(1) / size.sum()).max() < 0.1
    np.testing.assert_array_equal(first.y, model.prior_predictive(draws=300, random_seed=4).y)
    assert not np.array_equal(first.y, model.prior_predictive(draws=300, random_seed=5).y)
    table = first.summary()
    assert list(table.columns) == ["q2.5", "q25", "q50", "q75", "q97.5", "observed"]
    data = bh.datasets.load("cbpp")
    observed = data["incidence"].sum() / data["size"].sum()
    assert table.loc["pooled proportion of y", "observed"] == pytest.approx(observed)
    counts = bh.HLM("y ~ x + (1 | g)", toy(), family="poisson", exposure="years").prior_predictive(draws=200,
                                                                                                 random_seed=1)
    assert counts.quantity == "mean count" and (counts.y >= 0).all()  # PyMC's int64 Poisson overflowed here
    huge = counts.mu > 1e15  # default log-scale priors: 12 of 19,200 rows' expected counts at seed 1
    assert huge.any() and (counts.y[huge] == counts.mu[huge]).all()
    assert (counts.y[~huge] == np.round(counts.y[~huge])).all()
    np.testing.assert_allclose(counts.pooled, counts.y.mean(1), rtol=1e-12)
    assert np.isfinite(counts.summary().to_numpy()[:, :5]).all()


def test_default_priors_put_the_pooled_proportion_mostly_inside_001_099():
    """The default link-scale priors are weakly informative on the probability scale: 4,000 prior predictive
    data sets each of cbpp and Contraception (urban | district). Checked: the pooled proportion's 95% prior interval
    lies inside (0.001, 0.999) and contains the observed proportion, at least 90% of its prior mass is inside
    (0.01, 0.99), and its median is in (0.2, 0.8). Measured: cbpp [0.0024, 0.938], 93.7% inside, median 0.35
    (the lower end is below 0.01: the intercept's prior SD, 4.0, includes the uncentred period dummies);
    Contraception [0.045, 0.925], 99.1% inside."""
    contraception = bh.datasets.load("contraception")
    contraception["use"] = (contraception["use"] == "Y").astype(int)
    for model in (cbpp_model(), bh.HLM("use ~ age + urban + (urban | district)", contraception,
                                       family="bernoulli")):
        draws = model.prior_predictive(draws=4000, random_seed=1)
        lo, median, hi = np.quantile(draws.pooled, [0.025, 0.5, 0.975])
        assert 0.001 < lo < draws.observed < hi < 0.999, (lo, hi)
        assert np.mean((draws.pooled > 0.01) & (draws.pooled < 0.99)) > 0.9
        assert 0.2 < median < 0.8


@pytest.mark.parametrize("call, message", [
    (lambda: cbpp_model().prior_predictive(priors="flat"), "flat .improper"),
    (lambda: cbpp_model().prior_predictive(draws=0), "draws=0"),
    (lambda: cbpp_model().prior_predictive(random_seed=-1), "random_seed=-1"),
    (lambda: bh.HLM("Reaction ~ Days + (1 | Subject)", bh.datasets.load("sleepstudy")).prior_predictive(),
     "binomial, Bernoulli and count"),
])
def test_prior_predictive_refusals(call, message):
    with pytest.raises(OptionError, match=message):
        call()


@pytest.mark.filterwarnings("ignore::bayeshlm.bayes.SamplingWarning")  # 50 draws: low ESS by design
def test_same_seed_same_draws_and_posterior_predictive():
    model = cbpp_model()
    first = model.fit(method="bayes", random_seed=7, draws=50, tune=100, chains=2)
    second = model.fit(method="bayes", random_seed=7, draws=50, tune=100, chains=2)
    np.testing.assert_array_equal(first.draws("beta").values, second.draws("beta").values)
    replicated = first.posterior_predictive()
    assert replicated.shape == (100, model.design.n_obs)
    assert (replicated <= model.outcome.size).all() and (replicated >= 0).all()
    # PyMC's posterior predictive on the fit's graph resamples only y: the draws carry every free variable
    import pymc as pm

    with first.pymc_model():
        tree = pm.sample_posterior_predictive(first.posterior, progressbar=False, random_seed=1)
    pymc_y = tree["posterior_predictive"]["y"].values.reshape(100, -1)
    assert list(tree["posterior_predictive"].data_vars) == ["y"]
    herd_means = np.corrcoef(pymc_y.mean(0), replicated.mean(0))[0, 1]
    assert herd_means > 0.98  # the same eta per draw (0.9996 measured with 800 draws)


def test_laplace_start_fit_comes_from_the_caller():
    """The engine does not import the likelihood engine (tests/test_layers.py): HLM.fit passes a callable making
    the Laplace fit; none given or one that fails (here separation-like ValueError) means no start fit."""
    def failing():
        raise ValueError("separation")

    assert laplace_start(None) is None and laplace_start(failing) is None
    fit = object()
    assert laplace_start(lambda: fit) is fit


def test_parameterization_rule_and_requests():
    """Centred at reliability >= 0.7 unless nested in another factor; requests override; bad requests refused."""
    design = bh.HLM("y ~ x + (1 + x | school) + (1 | school:class)", pd.read_csv(REFERENCE / "bernoulli_nested.csv"),
                    family="bernoulli").design
    reliable = dict.fromkeys(design.factor_names, 0.9)
    choice = choose_parameterization(design, reliable, None)
    nested = [name for name in design.factor_names if design.nesting.get(name)]
    assert nested and all(choice[name] == "non-centred" for name in nested)
    assert all(choice[name] == "centred" for name in design.factor_names if name not in nested)
    assert choose_parameterization(design, dict.fromkeys(design.factor_names, 0.6), None)["school"] == "non-centred"
    with pytest.raises(OptionError, match="no grouping factor 'schol'.*school"):
        choose_parameterization(design, reliable, {"schol": "centred"})
    with pytest.raises(OptionError, match="'centred' or 'non-centred'"):
        choose_parameterization(design, reliable, {"school": "centered-ish"})


def test_centring_needs_an_untaken_intercept_and_puts_group_level_predictors_in_the_centre():
    """Two reliable crossed factors: only the more reliable is centred (the other would be centred on zero, a
    ridge with the intercept). A reliable factor with a group-level predictor is centred on its level-2 model at
    the means of the other columns: c_j = gamma_0 + w_j gamma_w + xbar'beta_period; without one, on gamma_0."""
    crossed = bh.HLM("y ~ x + (1 | subject) + (1 | item)", pd.read_csv(REFERENCE / "bernoulli_crossed.csv"),
                     family="bernoulli").design
    choice = choose_parameterization(crossed, {"subject": 0.8, "item": 0.9}, None)
    assert choice == {"item": "centred", "subject": "non-centred"}
    data = bh.datasets.load("cbpp")
    data["big_herd"] = (data["herd"].astype(int) > 7).astype(float)  # constant within each herd
    design = bh.HLM("cbind(incidence, size - incidence) ~ period + big_herd + (1 | herd)", data,
                    family="binomial").design
    assert choose_parameterization(design, {"herd": 0.95}, None) == {"herd": "centred"}
    assert choose_parameterization(design, {"herd": 0.6}, None) == {"herd": "non-centred"}
    weights = centre_weights(design, {"herd": "centred"})["herd"]
    herd = design.factor("herd")
    first = np.unique(herd.codes, return_index=True)[1]
    assert weights.shape == (15, 1, 5) and np.all(weights[:, 0, 0] == 1.0)
    np.testing.assert_array_equal(weights[:, 0, 4], design.X[first, 4])  # big_herd of each herd
    assert set(np.unique(weights[:, 0, 4])) == {0.0, 1.0}
    np.testing.assert_allclose(weights[:, 0, 1:4], np.broadcast_to(design.X[:, 1:4].mean(axis=0), (15, 3)),
                               rtol=1e-15)  # the period dummies at their means
    assert choose_parameterization(cbpp_model().design, {"herd": 0.95}, None) == {"herd": "centred"}
    weights = centre_weights(cbpp_model().design, {"herd": "centred"})["herd"]  # (J, q, p): c_j = C_j beta
    assert weights.shape == (15, 1, 4) and np.all(weights[:, 0] == [1.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("options, message", [
    ({"nagq": 25}, "Unknown option 'nagq'"),
    ({"priors": {"sigma": Prior("HalfNormal", sigma=1.0)}}, "no parameter 'sigma'.*Valid names"),
    ({"priors": {"tau_herd": 2.0}}, "give a bayeshlm.bayes.Prior"),
    ({"priors": "vague"}, "priors='vague'"),
    ({"priors": {"shape": Prior("Gamma", alpha=1.0, beta=1.0)}}, "no parameter 'shape'"),
    ({"parameterization": "centred"}, "give a dict"),
    ({"draws": 0}, "draws=0"),
    ({"sampler": "stan"}, "sampler='stan'"),
])
def test_bad_options_are_refused_in_words(options, message):
    with pytest.raises(OptionError, match=message):
        cbpp_model().fit(method="bayes", **options)


def test_pymc_model_has_observed_outcome_and_refuses_routes():
    model = cbpp_model()
    graph = model.pymc_model()
    assert [rv.name for rv in graph.observed_RVs] == ["y"]
    np.testing.assert_array_equal(graph["data__y"].get_value(), model.outcome.y)
    with pytest.raises(OptionError, match="samples every group effect"):
        model.pymc_model(route="marginal")


def test_a_factor_is_judged_by_its_least_reliable_coefficient():
    """The calibration design of docs/calibration.md (40 groups x 25 rows, random intercept SD 1 and slope SD 0.5,
    data seed 24000): intercepts are well measured, slopes are not, so the factor stays non-centred (judged by its
    intercepts it was centred: 1,581 divergences in 300 replications, none non-centred)."""
    rng = np.random.default_rng(24000)
    T = np.outer([1.0, 0.5], [1.0, 0.5]) * np.array([[1.0, 0.3], [0.3, 1.0]])
    u = rng.multivariate_normal(np.zeros(2), T, size=40)
    g = np.repeat(np.arange(40), 25)
    x = rng.standard_normal(1000)
    y = rng.binomial(1, 1.0 / (1.0 + np.exp(-(-0.5 + u[g, 0] + (1.0 + u[g, 1]) * x))))
    model = bh.HLM("y ~ x + (x | g)", pd.DataFrame({"y": y, "x": x, "g": g}), family="bernoulli")
    laplace = model.fit("ml")
    by_coefficient = []
    for q, term in enumerate(["(Intercept)", "x"]):
        conditional_sd = laplace.random_effects("g").xs(term, level=-1)["se"].to_numpy()
        by_coefficient.append(np.mean(1.0 - conditional_sd**2 / laplace.tau["g"].iloc[q, q]))
    assert by_coefficient[0] >= 0.7 > by_coefficient[1]  # the case the rule is for
    reliability = laplace_reliability(model.design, laplace)
    assert reliability["g"] == pytest.approx(min(by_coefficient), rel=1e-12)
    assert choose_parameterization(model.design, reliability, None) == {"g": "non-centred"}


def test_observation_level_effects_get_a_higher_default_target_accept():
    """0.95 when a factor has one row per group (observation-level effect) not conditionally centred, else 0.9."""
    data = pd.read_csv(REFERENCE / "poisson_exposure.csv")
    data["obs"] = [f"o{i:03d}" for i in range(len(data))]
    olre = bh.HLM("y ~ x + (1 | g) + (1 | obs)", data, family="poisson", exposure="years").design
    assert default_target_accept(olre) == 0.95
    assert default_target_accept(bh.HLM("y ~ x + (1 | g)", data, family="poisson", exposure="years").design) == 0.9
    assert default_target_accept(cbpp_model().design) == 0.9


def overdispersed_counts(seed=7, J=10, n=20):
    """Poisson counts with exposure, a random intercept per g and an observation-level effect of SD 0.4."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), n)
    x, years = rng.normal(size=J * n), rng.uniform(0.5, 2.0, J * n)
    eta = 0.8 + 0.4 * x + rng.normal(scale=0.5, size=J)[g] + rng.normal(scale=0.4, size=J * n)
    return with_observation_level(pd.DataFrame({"y": rng.poisson(years * np.exp(eta)), "x": x, "years": years,
                                                "g": g.astype(str)}))


@pytest.mark.parametrize("family", ["poisson", "binomial"])
def test_conditional_centring_puts_z_prime_zero_at_the_laplace_modes(family):
    """The default table of an observation-level effect where the Laplace tau_obs > 0 (overdispersed Poisson
    counts; cbpp with (1 | obs)): h_j is the information at the Laplace fit's linear predictor (mu_j; n_j p_j
    (1 - p_j)), and the mean of z_j the map gives at tau = the Laplace tau, tau c_j / (1 + tau^2 h_j), is the
    Laplace mode u0_j / tau (the mode solves g_j(u0_j) = u0_j / tau^2, g_j the score), so z' = 0 there. Only
    non-centred observation-level factors get one (not the other factor, not obs when centred), none without a
    Laplace fit; the default target_accept is then 0.85 (0.95 when obs is not conditionally centred)."""
    if family == "poisson":
        model = bh.HLM("y ~ x + (1 | g) + (1 | obs)", overdispersed_counts(), family="poisson", exposure="years")
        other = "g"
    else:
        model = bh.HLM(CBPP + " + (1 | obs)", with_observation_level(bh.datasets.load("cbpp")), family="binomial")
        other = "herd"
    design, outcome = model.design, model.outcome
    laplace = model.fit()
    tau = float(laplace.tau["obs"].iloc[0, 0]) ** 0.5
    assert tau > 0.2
    choice = {other: "centred", "obs": "non-centred"}
    tables = conditional_centring_default(design, outcome, choice, laplace)
    assert list(tables) == ["obs"]
    c, h = tables["obs"].T
    eta = laplace.predict(type="link").to_numpy()
    p = 1.0 / (1.0 + np.exp(-eta))
    expected_h = np.exp(eta) if family == "poisson" else outcome.size * p * (1.0 - p)
    np.testing.assert_allclose(h, expected_h, rtol=1e-12)
    mode = laplace.random_effects("obs")["estimate"].to_numpy()
    np.testing.assert_allclose(tau * c / (1.0 + tau**2 * h), mode / tau, rtol=1e-5, atol=1e-6)
    assert np.std(mode) > 0.05  # the check has something to check
    assert conditional_centring_default(design, outcome, {other: "centred", "obs": "centred"}, laplace) == {}
    assert conditional_centring_default(design, outcome, choice, None) == {}
    assert default_target_accept(design, tables) == 0.85
    assert default_target_accept(design, {}) == 0.95


def test_conditional_centring_needs_a_non_centred_one_coefficient_factor():
    """pack refuses a conditional-centring table on a centred factor or of the wrong shape."""
    model = bh.HLM("y ~ x + (1 | g) + (1 | obs)", overdispersed_counts(), family="poisson", exposure="years")
    design, outcome = model.design, model.outcome
    prior_set, shape = resolve_glmm_priors(design, outcome, None)
    with pytest.raises(ValueError, match=r"\(J, 2\) table"):
        build_kernel(design, outcome, prior_set, shape, {"g": "centred", "obs": "non-centred"}, None, None, None,
                     {"obs": np.zeros((5, 2))})
    # build_kernel itself leaves centred factors out: the packed kernel has no table for them
    kernel = build_kernel(design, outcome, prior_set, shape, {"g": "centred", "obs": "centred"}, None, None, None,
                          {"obs": conditional_table(200, 3)})
    plain = build_kernel(design, outcome, prior_set, shape, {"g": "centred", "obs": "centred"}, None)
    np.testing.assert_array_equal(kernel.buffer, plain.buffer)
