"""Detector models: expected photons lambda -> recorded counts.

The paper's model is shot noise alone, ``counts ~ Poisson(lambda)``. A photomultiplier
model (gain with excess noise, read noise, offset) is a planned, named extension: it
will be added here as another entry of ``MODELS`` and selected with
``Params.detector='pmt'``; it is never switched on silently.
"""

from __future__ import annotations

import jax


def poisson(key, expected):
  """Shot noise: counts ~ Poisson(expected), returned as float32 [..., h, w]."""
  return jax.random.poisson(key, expected).astype(expected.dtype)


MODELS = {"poisson": poisson}


def record(key, expected, params):
  """Counts for an expected image under ``params.detector``."""
  return MODELS[params.detector](key, expected)
