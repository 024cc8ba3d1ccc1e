"""Detector models: expected photons lambda -> recorded counts.

The paper's model is shot noise alone, ``counts ~ Poisson(lambda)``. A photomultiplier
model (gain with excess noise, read noise, offset) is a planned, named extension: it
will be added here as another entry of ``MODELS`` and selected with
``Params.detector='pmt'``; it is never switched on silently.

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


MODELS = {"poisson": poisson_batch}


def record_batch(keys, expected, params):
  """Counts [n, h, w] for expected images [n, h, w] under ``params.detector``."""
  return MODELS[params.detector](keys, expected)


def record(key, expected, params):
  """Counts [h, w] of one frame; the same numbers ``record_batch`` gives that frame."""
  return record_batch(key[None], expected[None], params)[0]
