"""The photomultiplier detector (docs/spec.md, section 7) against its closed-form moments."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qdjax.sim import data, detector, presets, simulate


def pmt_cumulants(e, alpha, sigma, offset):
  """Mean, variance and 4th cumulant of offset + Gamma(3 Poisson(e), alpha) + N(0, sigma^2).

  A compound Poisson sum has cumulants kappa_k = e E[Y^k]; Y ~ Gamma(3, alpha) has
  E[Y^2] = 12/alpha^2 and E[Y^4] = 360/alpha^4. The Gaussian adds sigma^2 to the variance.
  """
  return offset + 3 * e / alpha, 12 * e / alpha**2 + sigma**2, 360 * e / alpha**4


# One compilation serves every test with the same shapes.
_pmt_batch = jax.jit(detector.pmt_batch)
SHAPE = (40, 40, 40)


def check_moments(values, e, alpha, sigma, offset, z=5.0):
  values = np.asarray(values, np.float64).ravel()
  n = values.size
  mean, var, kappa4 = pmt_cumulants(e, alpha, sigma, offset)
  assert abs(values.mean() - mean) < z * math.sqrt(var / n), (values.mean(), mean)
  # Var of the sample variance: (kappa4 + 2 var^2) / n.
  assert abs(values.var() - var) < z * math.sqrt((kappa4 + 2 * var**2) / n), (values.var(), var)


@pytest.mark.parametrize("e", [0.0, 0.3, 4.0, 40.0])
def test_pmt_mean_and_variance_match_closed_forms(e):
  alpha, sigma, offset = 0.44, 8.1, -2.74
  keys = jax.random.split(jax.random.key(0), SHAPE[0])
  out = _pmt_batch(keys, jnp.full(SHAPE, e), alpha, sigma, offset)
  check_moments(out, e, alpha, sigma, offset)
  # The closed forms the library reports are the same ones.
  assert detector.pmt_moments(e, alpha, sigma, offset) == pytest.approx(
    pmt_cumulants(e, alpha, sigma, offset)[:2]
  )


def test_pmt_without_dark_noise_is_zero_exactly_where_no_photon_arrived():
  """And its photons are the Poisson detector's for the same keys."""
  keys = jax.random.split(jax.random.key(1), SHAPE[0])
  expected = jnp.full(SHAPE, 0.7)
  photons = np.asarray(jax.jit(detector.poisson_batch)(keys, expected))
  out = np.asarray(_pmt_batch(keys, expected, 0.5, 0.0, 0.0))
  np.testing.assert_array_equal(out == 0, photons == 0)
  # Given n photons the output is Gamma(3n, alpha): mean 3n/alpha.
  one = out[photons == 1]
  assert abs(one.mean() - 6.0) < 5 * math.sqrt(12 / 0.25 / one.size)


def test_record_batch_takes_per_frame_physical_values():
  """A batch drawn over a prior: N, B and the PMT values are [n] arrays, one per frame."""
  n = 6
  base = simulate.make_params(detector="pmt")
  alpha = jnp.array([0.2, 0.44, 1.0, 0.3, 2.0, 0.6])
  sigma = jnp.array([0.0, 8.1, 2.0, 5.0, 1.0, 3.0])
  offset = jnp.array([-3.0, 0.0, 10.0, 100.0, -50.0, 7.0])
  p = base.replace(
    pmt_alpha=alpha,
    pmt_dark_sigma=sigma,
    pmt_offset=offset,
    peak_photons=jnp.linspace(2, 20, n),
    background_photons=jnp.linspace(1, 6, n),
  )
  e = jnp.linspace(1.0, 10.0, n)
  expected = jnp.broadcast_to(e[:, None, None], (n, 64, 64))
  out = jax.jit(detector.record_batch)(jax.random.split(jax.random.key(2), n), expected, p)
  assert out.shape == (n, 64, 64)
  for i in range(n):
    check_moments(out[i], float(e[i]), float(alpha[i]), float(sigma[i]), float(offset[i]))


@pytest.mark.parametrize(
  "name, value",
  [("pmt_alpha", 0.0), ("pmt_alpha", -0.44), ("pmt_dark_sigma", -1.0), ("pmt_offset", math.nan)],
)
def test_bad_pmt_values_are_rejected_by_name(name, value):
  with pytest.raises(ValueError, match=name):
    simulate.make_params(detector="pmt", **{name: value})


def test_params_json_carries_the_pmt_only_when_it_is_used():
  preset = presets.get("paper")
  record = data.params_record(preset.sim_params(regime=1, detector="pmt"), preset)
  assert record["detector"] == "pmt" and record["pmt_alpha"] == pytest.approx(0.44)
  assert "pmt_alpha" not in data.params_record(preset.sim_params(regime=1), preset)
