"""Block bootstrap of evaluation.bootstrap against a plain index-based loop."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import lfilter

from evaluation.bootstrap import _draw_blocks, block_bootstrap_means


def _naive_means(x: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Reference: materialise each resample's indices and average."""
    n = x.size
    out = []
    for s_row, l_row in zip(starts, lengths, strict=True):
        idx = np.concatenate([(s + np.arange(ln)) % n for s, ln in zip(s_row, l_row, strict=True)])
        assert idx.size == n
        out.append(x[idx].mean())
    return np.array(out)


@pytest.mark.parametrize("method", ["stationary", "circular"])
@pytest.mark.parametrize("block_length", [1.0, 4.0, 200.0])
def test_prefix_sum_means_equal_materialised_resamples(method, block_length):
    x = np.random.default_rng(0).normal(size=50)
    fast = block_bootstrap_means(x, n_boot=20, block_length=block_length, method=method, rng=3)
    starts, lengths = _draw_blocks(50, 20, block_length, method, np.random.default_rng(3))
    np.testing.assert_allclose(fast, _naive_means(x, starts, lengths), rtol=1e-12, atol=1e-15)
    # the reference must notice a wrong series
    wrong = x.copy()
    wrong[0] += 1.0
    assert not np.allclose(fast, _naive_means(wrong, starts, lengths))


def test_series_share_the_same_blocks():
    x = np.random.default_rng(1).normal(size=(3, 100))
    joint = block_bootstrap_means(x, n_boot=50, rng=9)
    alone = block_bootstrap_means(x[2], n_boot=50, rng=9)
    np.testing.assert_allclose(joint[2], alone)
    assert joint.shape == (3, 50)


def test_circular_blocks_of_full_length_are_rotations():
    x = np.random.default_rng(2).normal(size=64)
    means = block_bootstrap_means(x, n_boot=30, block_length=64, method="circular", rng=0)
    np.testing.assert_allclose(means, x.mean())


def test_iid_bootstrap_standard_error_matches_theory():
    x = np.random.default_rng(3).normal(size=1000)
    means = block_bootstrap_means(x, n_boot=2000, block_length=1, rng=4)
    assert means.mean() == pytest.approx(x.mean(), abs=x.std() / np.sqrt(1000) / 10)
    assert means.std() == pytest.approx(x.std() / np.sqrt(1000), rel=0.06)


def test_blocks_capture_autocorrelation_that_iid_resampling_misses():
    # AR(1) with phi = 0.8: the long-run sd of the mean is sqrt(1.8 / 0.2) = 3x the iid one
    e = np.random.default_rng(5).normal(size=8000)
    x = lfilter([1.0], [1.0, -0.8], e)
    iid = block_bootstrap_means(x, n_boot=500, block_length=1, rng=6).std()
    blocks = block_bootstrap_means(x, n_boot=500, block_length=80, rng=6).std()
    assert blocks / iid == pytest.approx(3.0, rel=0.2)


def test_bad_inputs():
    with pytest.raises(ValueError, match="n_bars >= 2"):
        block_bootstrap_means(np.zeros(1), n_boot=10)
    with pytest.raises(ValueError, match="block_length must be >= 1"):
        block_bootstrap_means(np.zeros(10), n_boot=10, block_length=0.5)
    with pytest.raises(ValueError, match="method must be"):
        block_bootstrap_means(np.zeros(10), n_boot=10, method="moving")  # type: ignore[arg-type]
