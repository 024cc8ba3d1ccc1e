"""Detector models: expected photons lambda -> recorded counts.

The paper's model is shot noise alone, ``counts ~ Poisson(lambda)`` (``detector='poisson'``).
``detector='pmt'`` is the photomultiplier of docs/spec.md, section 7 (the model of the sl2pm
package): n ~ Poisson(lambda) photons reach the photocathode, each gives a pulse
~ Gamma(3, rate alpha), so n photons give Gamma(3n, alpha) (0 when n = 0), and Gaussian
dark noise N(offset, dark_sigma^2) is added to every pixel. A uniform frame of mean photon
level e then has mean offset + 3e/alpha and variance 12e/alpha^2 + dark_sigma^2. The PMT is
never switched on silently: it is chosen by name, with its own ``pmt_*`` values.

Why not just ``jax.random.poisson``: for small means it runs Knuth's algorithm, drawing
about lambda + 1 threefry uniforms per pixel in a data-dependent loop, and it was 90% of
the simulator's time on the CPU. Here every pixel draws one uniform and is inverted
through the Poisson CDF, with the recurrence p_k = p_{k-1} lambda / k run for as many
steps as the batch's largest count needs. That is exact up to float32 rounding of the
CDF (~1e-7 in probability). Means above ``INVERSION_MAX_MEAN`` (where exp(-lambda)
underflows the recurrence) fall back to ``jax.random.poisson``, decided once per batch so
the common case never pays for it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

INVERSION_MAX_MEAN = 64.0


# CDF steps taken per while-loop iteration. Unrolled, they fuse into one elementwise
# kernel, so the batch streams through memory once per 16 steps instead of once per step.
_STEPS_PER_PASS = 16


def _poisson_inversion(u, lam):
  """Smallest k with CDF(k) >= u, elementwise. u: uniform [0, 1); lam <= 64."""

  def keep_going(state):
    _, _, prob, cdf = state
    # Past the far tail the CDF stops growing in float32; stop there rather than count on.
    return jnp.any((u > cdf) & (prob > 1e-10 * cdf))

  def passes(state):
    k, count, prob, cdf = state
    for _ in range(_STEPS_PER_PASS):
      count = count + (u > cdf)
      k = k + 1.0
      prob = prob * lam / k
      cdf = cdf + prob
    return k, count, prob, cdf

  prob = jnp.exp(-lam)
  state = (jnp.zeros((), lam.dtype), jnp.zeros_like(lam), prob, prob)
  return jax.lax.while_loop(keep_going, passes, state)[1]


def poisson_batch(keys, expected):
  """Shot noise for a batch of frames, one key per frame.

  Args:
    keys: [n] PRNG keys.
    expected: [n, h, w] means.

  Returns:
    counts: [n, h, w] float32 (integers).
  """
  k_uniform = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
  u = jax.vmap(lambda k, e: jax.random.uniform(k, e.shape, e.dtype))(k_uniform, expected)
  small = jnp.minimum(expected, INVERSION_MAX_MEAN)
  counts = _poisson_inversion(u, small)

  def with_large(counts):
    k_large = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    large = jax.vmap(jax.random.poisson)(k_large, expected).astype(expected.dtype)
    return jnp.where(expected > INVERSION_MAX_MEAN, large, counts)

  return jax.lax.cond(jnp.any(expected > INVERSION_MAX_MEAN), with_large, lambda c: c, counts)


def _per_frame(value, ndim: int):
  """A scalar, or a per-frame [n] value, shaped to broadcast against [n, ...] (ndim axes)."""
  value = jnp.asarray(value, jnp.float32)
  return value.reshape(value.shape + (1,) * (ndim - value.ndim)) if value.ndim else value


def pmt_batch(keys, expected, alpha, dark_sigma, offset):
  """PMT output for a batch of frames, one key per frame.

  The photon counts are exactly ``poisson_batch``'s for the same keys, so a PMT frame is the
  Poisson frame of the same seed passed through the PMT.

  Args:
    keys: [n] PRNG keys.
    expected: [n, h, w] mean photons.
    alpha: Gamma rate per output unit (gain 3/alpha), a scalar or per frame [n].
    dark_sigma: dark-noise standard deviation (output units), scalar or [n].
    offset: dark-noise mean (output units), scalar or [n].

  Returns:
    output: [n, h, w] float32, PMT output units.
  """
  photons = poisson_batch(keys, expected)
  alpha, dark_sigma, offset = (_per_frame(v, expected.ndim) for v in (alpha, dark_sigma, offset))
  k_gamma = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)
  k_dark = jax.vmap(lambda k: jax.random.fold_in(k, 3))(keys)
  # Gamma(0) is the point mass at 0; draw at shape >= 1 there and discard it.
  shape = jnp.where(photons > 0, 3.0 * photons, 1.0)
  pulses = jax.vmap(lambda k, a: jax.random.gamma(k, a, dtype=a.dtype))(k_gamma, shape)
  charge = jnp.where(photons > 0, pulses, 0.0) / alpha
  dark = jax.vmap(lambda k, e: jax.random.normal(k, e.shape, e.dtype))(k_dark, expected)
  return charge + offset + dark_sigma * dark


def pmt_moments(photons, alpha, dark_sigma, offset):
  """Mean and variance of PMT output at a mean photon level (docs/spec.md, section 7)."""
  return offset + 3.0 * photons / alpha, 12.0 * photons / alpha**2 + dark_sigma**2


def _record_poisson(keys, expected, params):
  return poisson_batch(keys, expected)


def _record_pmt(keys, expected, params):
  return pmt_batch(keys, expected, params.pmt_alpha, params.pmt_dark_sigma, params.pmt_offset)


MODELS = {"poisson": _record_poisson, "pmt": _record_pmt}


def record_batch(keys, expected, params):
  """Recorded values [n, h, w] for expected images [n, h, w] under ``params.detector``.

  The physical leaves of ``params`` (``pmt_*`` here) may be scalars or per-frame [n] arrays,
  as when a batch is drawn over a prior on them.
  """
  return MODELS[params.detector](keys, expected, params)
