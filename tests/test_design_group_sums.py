"""design.group_sums: the compiled one-pass sums (_group_sums.c) equal the bincount ones to the last bit."""

import numpy as np
import pytest

from bayeshlm.design import design as design_module
from bayeshlm.design.design import _group_sums_by_bincount, group_sums

compiled = pytest.mark.skipif(design_module._group_sums is None, reason="_group_sums extension not built")


def _rows(seed=0, n=500, n_groups=40):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, n_groups, n)
    codes[codes == 7] = 8  # group 7 empty: its sums are 0
    return codes, rng.normal(size=(n, 3)) * 1e3, rng.normal(size=(n, 5)), n_groups


@compiled
@pytest.mark.parametrize("layout", ["C", "F", "slice"])
def test_compiled_equals_bincount_bitwise(layout):
    codes, A, B, J = _rows()
    if layout == "F":
        A, B = np.asfortranarray(A), np.asfortranarray(B)
    elif layout == "slice":
        A, B = A[:, ::2], B[:, 1:4]
    out = group_sums(codes, A, B, J)
    assert out.shape == (J, A.shape[1], B.shape[1])
    assert np.array_equal(out, _group_sums_by_bincount(codes, A, B, J))
    assert np.all(out[7] == 0.0)
    # and the definition, by a loop over the groups
    for j in (0, 8, J - 1):
        rows = codes == j
        np.testing.assert_allclose(out[j], A[rows].T @ B[rows], rtol=1e-12, atol=1e-9)


@compiled
def test_compiled_refuses_codes_outside_the_groups():
    codes, A, B, J = _rows()
    codes[3] = J
    with pytest.raises(ValueError, match="code of row 3"):
        group_sums(codes, A, B, J)


def test_other_dtypes_fall_back_to_bincount():
    codes, A, B, J = _rows(1)
    out = group_sums(codes.astype(np.int32), A.astype(np.float32), B, J)
    assert np.array_equal(out, _group_sums_by_bincount(codes, A.astype(np.float32), B, J))
