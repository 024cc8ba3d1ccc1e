"""Simulator throughput at the paper preset, beside two references measured in the same run.

* ``numpy``: the same model (paths, exact sweep integral, Poisson) written as plain
  vectorised NumPy/SciPy, the way one would without JAX.
* ``rng_bound``: drawing the same random numbers alone (the path normals, the start and D
  uniforms, and the Poisson counts of an image like the simulated ones), with no physics.
  The simulator cannot beat this; the ratio says how much the physics costs on top.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
from scipy.special import erf

from qdjax import detector, presets, scan, simulate
from qdjax.benchmarks import median_seconds


def numpy_reference(rng: np.random.Generator, p: simulate.Params, n: int) -> np.ndarray:
  """The simulator's model for one-QD frames in vectorised NumPy. Returns counts [n, h, w]."""
  h, w, k = p.height, p.width, p.substeps
  a, s_xy, s_z = float(p.pixel_size_um), float(p.sigma_xy_um), float(p.sigma_z_um)
  m, d = float(p.margin_px), float(p.diffusion_um2_s[0])
  dt = np.asarray(scan.sample_time_steps(h, w, k, float(p.dwell_s), float(p.retrace_s)))
  start = np.stack(
    [
      rng.uniform(m, w - 1 - m, n) * a,
      rng.uniform(m, h - 1 - m, n) * a,
      rng.uniform(-1, 1, n) * float(p.z_range_um),
    ],
    axis=-1,
  )
  steps = rng.standard_normal((n, h * w * k, 3), dtype=np.float32) * np.sqrt(2 * d * dt)[
    None, :, None
  ].astype(np.float32)
  path = (start[:, None, :] + np.cumsum(steps, axis=1)).reshape(n, h, w, k, 3)
  x, y, z = path[..., 0], path[..., 1], path[..., 2]
  cols = np.arange(w)[:, None]
  kk = np.arange(k)[None, :]
  x0 = (cols - 0.5 + kk / k) * a
  x1 = (cols - 0.5 + (kk + 1) / k) * a
  y_beam = (np.arange(h) * a)[:, None, None]
  scale = s_xy * math.sqrt(2)
  sweep = (erf((x - x0) / scale) - erf((x - x1) / scale)) * (
    s_xy * math.sqrt(math.pi / 2) / (a / k)
  )
  psf = sweep * np.exp(-((y - y_beam) ** 2) / (2 * s_xy**2) - z**2 / (2 * s_z**2))
  lam = float(p.background_photons) + float(p.peak_photons) * psf.mean(-1)
  return rng.poisson(lam).astype(np.float32)


@functools.partial(jax.jit, static_argnums=2)
def rng_bound(keys, expected, normals_per_frame: int):
  """The random draws of a batch (one key per frame) with no physics in between: the
  start/count/D uniforms, the path normals, and the Poisson counts of ``expected``."""

  def draws(key):
    k_uniform, k_normal = jax.random.split(key)
    return (
      jax.random.uniform(k_uniform, (5,)).sum()
      + jax.random.normal(k_normal, (normals_per_frame,)).sum()
    )

  counts = detector.poisson_batch(keys, expected)
  return jax.vmap(draws)(keys).sum() + counts.sum()


def run(repeats: int = 5, quick: bool = False) -> dict:
  preset = presets.get("paper")
  regime = 3
  params = preset.sim_params(regime=regime)
  batch_sizes = (16, 128) if quick else (64, 256, 1024, 4096)
  per_frame_normals = params.max_particles * params.height * params.width * params.substeps * 3
  rng = np.random.default_rng(0)
  rows = []
  for n in batch_sizes:
    key = jax.random.key(n)
    keys = jax.random.split(key, n)
    expected = simulate.simulate_batch(key, params, n).expected

    def sim(key=key, n=n):
      simulate.simulate_batch(key, params, n).counts.block_until_ready()

    def bound(keys=keys, expected=expected):
      rng_bound(keys, expected, per_frame_normals).block_until_ready()

    def reference(n=n):
      numpy_reference(rng, params, n)

    t_sim = median_seconds(sim, repeats)
    t_bound = median_seconds(bound, repeats)
    t_numpy = median_seconds(reference, repeats)
    rows.append(
      {
        "batch": n,
        "jax_frames_per_s": n / t_sim,
        "numpy_frames_per_s": n / t_numpy,
        "rng_bound_frames_per_s": n / t_bound,
        "speedup_vs_numpy": t_numpy / t_sim,
        "slowdown_vs_rng_bound": t_sim / t_bound,
      }
    )
  best = max(rows, key=lambda r: r["jax_frames_per_s"])
  return {
    "what": "simulate",
    "preset": preset.name,
    "regime": regime,
    "substeps": params.substeps,
    "device": str(jax.devices()[0]),
    "num_devices": jax.device_count(),
    "repeats": repeats,
    "rows": rows,
    "best_batch": best["batch"],
    "targets": {
      "speedup_vs_numpy>=2": best["speedup_vs_numpy"] >= 2,
      "slowdown_vs_rng_bound<=2.5": best["slowdown_vs_rng_bound"] <= 2.5,
    },
  }
