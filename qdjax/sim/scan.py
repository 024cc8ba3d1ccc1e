"""The beam raster of a laser-scanning microscope: when and where each pixel is recorded.

Conventions (docs/spec.md, section 1):
  * Row r (y, slow axis) starts at ``t_r = r * (width * dwell + retrace)``.
  * Pixel (r, c) is recorded during ``[t_r + c * dwell, t_r + (c + 1) * dwell)``.
  * During that dwell the beam sweeps at constant speed from ``x = (c - 1/2) a`` to
    ``x = (c + 1/2) a``, at ``y = r a`` and ``z = 0``.
  * Each dwell is sampled at ``substeps`` = K times ``(k + 1/2) / K`` of the dwell.

All functions are pure and traceable: geometry (height, width, substeps) is static, the
times and lengths may be traced, so gradients flow to ``pixel_size_um``, ``dwell_s`` and
``retrace_s``.
"""

from __future__ import annotations

import jax.numpy as jnp


def line_period(width: int, dwell_s, retrace_s):
  """Seconds from the start of one line to the start of the next."""
  return width * dwell_s + retrace_s


def pixel_start_times(height: int, width: int, dwell_s, retrace_s):
  """Start time of each pixel's dwell.

  Returns:
    times: [height, width] seconds.
  """
  rows = jnp.arange(height, dtype=jnp.float32)[:, None]
  cols = jnp.arange(width, dtype=jnp.float32)[None, :]
  return rows * line_period(width, dwell_s, retrace_s) + cols * dwell_s


def sample_times(height: int, width: int, substeps: int, dwell_s, retrace_s):
  """Times of the K samples of every dwell, in recording order.

  Returns:
    times: [height, width, substeps] seconds.
  """
  fraction = (jnp.arange(substeps, dtype=jnp.float32) + 0.5) / substeps
  start = pixel_start_times(height, width, dwell_s, retrace_s)
  return start[..., None] + fraction * dwell_s


def sample_time_steps(height: int, width: int, substeps: int, dwell_s, retrace_s):
  """Time elapsed since the previous sample, for every sample in recording order.

  Within a line consecutive samples are ``dwell / K`` apart; the first sample of a line
  follows the last one of the previous line by ``retrace + dwell / K``. The very first
  sample has no predecessor and gets 0, so a path built by ``cumsum`` starts where it is
  put.

  Returns:
    dt: [height * width * substeps] seconds.
  """
  dtype = jnp.result_type(dwell_s, retrace_s, jnp.float32)
  per_line = width * substeps
  first_of_line = (jnp.arange(height * per_line) % per_line == 0).astype(dtype)
  dt = dwell_s / substeps + retrace_s * first_of_line
  return dt * (jnp.arange(height * per_line) > 0)


def beam_sweep_um(width: int, substeps: int, pixel_size_um):
  """x extent swept by the beam during each sample's slice of the dwell.

  Sample k of column c covers the beam interval
  ``[(c - 1/2 + k/K) a, (c - 1/2 + (k+1)/K) a]``; its midpoint is the beam position at the
  sample time.

  Returns:
    (x_start, x_end): each [width, substeps] micrometres.
  """
  cols = jnp.arange(width, dtype=jnp.float32)[:, None]
  k = jnp.arange(substeps, dtype=jnp.float32)[None, :]
  x_start = (cols - 0.5 + k / substeps) * pixel_size_um
  x_end = (cols - 0.5 + (k + 1) / substeps) * pixel_size_um
  return x_start, x_end


def beam_rows_um(height: int, pixel_size_um):
  """y of the beam on each line: [height] micrometres."""
  return jnp.arange(height, dtype=jnp.float32) * pixel_size_um
