"""Simulator throughput at the paper preset, beside two references measured in the same run.

* ``numpy``: the same model (paths, exact sweep integral, Poisson) written as plain
  vectorised NumPy/SciPy, the way one would without JAX.
* ``rng_bound``: drawing the same random numbers alone (the path normals, the start and D
  uniforms, and the Poisson counts of an image like the simulated ones), with no physics.
  The simulator cannot beat this; the ratio says how much the physics costs on top.

``write`` measures what ``experiments/simulate.py`` does: ``data.write`` (simulate in chunks,
store, save to a file) of ``num_frames`` frames, with float32 images (the default) and with
``integer_counts``, beside ``data.generate`` (the same frames in
memory), the in-memory simulator at one chunk, and the NumPy reference's compute alone, all
interleaved in one loop. ``chunks`` times ``data.generate`` at several chunk sizes,
``compression`` the file formats of the frames, and ``cli`` one cold run of the script
(imports and compilation included).
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import os
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
from scipy.special import erf

from benchmarks import interleaved_medians, median_seconds, process_seconds
from qdjax.sim import data, detector, presets, scan, simulate

# Frames per call of the NumPy reference beside the write path (its memory grows with it).
NUMPY_BATCH = 1024


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
  batch_sizes = (16,) if quick else (64, 256, 1024, 4096)
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
  num_frames = 512 if quick else 8192
  write = write_rates(preset, params, num_frames, repeats)
  chunk_sizes = (64,) if quick else (64, 128, 256, 512, 1024, 2048)
  chunk_rows = chunk_rates(params, num_frames, chunk_sizes, repeats)
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
    "write": write,
    "chunks": chunk_rows,
    "best_chunk": max(chunk_rows, key=lambda r: r["frames_per_s"])["chunk"],
    "compression": compression(preset, params, num_frames, repeats),
    "cli": None if quick else cli_rate(20000, regime),
    "targets": {
      "speedup_vs_numpy>=2": best["speedup_vs_numpy"] >= 2,
      "slowdown_vs_rng_bound<=2.5": best["slowdown_vs_rng_bound"] <= 2.5,
      "write_vs_numpy>=2": write["write_vs_numpy"] >= 2,
    },
  }


def write_rates(preset, params, num_frames: int, repeats: int) -> dict:
  """``data.write`` to a file beside ``data.generate``, the simulator at one chunk and the
  NumPy reference (compute only), interleaved; frames/s of each."""
  rng = np.random.default_rng(1)
  key = jax.random.key(0)
  with tempfile.TemporaryDirectory() as tmp:
    paths = (Path(tmp) / f"frames{i}.npz" for i in itertools.count())
    path = None

    def write(integer_counts=False):
      nonlocal path
      path = next(paths)  # a new file each time, as a user writes it (no old file to replace)
      data.write(path, params, num_frames, seed=0, preset=preset, integer_counts=integer_counts)
      return path

    seconds = interleaved_medians(
      {
        "write": write,
        "write_integer_counts": lambda: write(integer_counts=True),
        "generate": lambda: data.generate(params, num_frames, seed=0),
        "simulator": lambda: simulate.simulate_batch(
          key, params, data.CHUNK
        ).counts.block_until_ready(),
        "numpy": lambda: numpy_reference(rng, params, NUMPY_BATCH),
      },
      repeats,
    )
    files = {"float32": write(), "integer_counts": write(integer_counts=True)}
    sizes, dtypes = {}, {}
    for name, file in files.items():
      sizes[name] = file.stat().st_size / num_frames
      with np.load(file) as saved:
        dtypes[name] = saved["images"].dtype.name
  rates = {
    "write": num_frames / seconds["write"],
    "write_integer_counts": num_frames / seconds["write_integer_counts"],
    "generate": num_frames / seconds["generate"],
    "simulator": data.CHUNK / seconds["simulator"],
    "numpy": NUMPY_BATCH / seconds["numpy"],
  }
  return {
    "num_frames": num_frames,
    "chunk": data.CHUNK,
    "numpy_batch": NUMPY_BATCH,
    "images_dtype": dtypes["float32"],
    "file_bytes_per_frame": sizes["float32"],
    "write_frames_per_s": rates["write"],
    "integer_counts_images_dtype": dtypes["integer_counts"],
    "integer_counts_file_bytes_per_frame": sizes["integer_counts"],
    "write_integer_counts_frames_per_s": rates["write_integer_counts"],
    "generate_frames_per_s": rates["generate"],
    "simulator_frames_per_s": rates["simulator"],
    "numpy_compute_frames_per_s": rates["numpy"],
    "write_vs_numpy": rates["write"] / rates["numpy"],
    "write_integer_counts_vs_numpy": rates["write_integer_counts"] / rates["numpy"],
    "generate_vs_simulator": rates["generate"] / rates["simulator"],
  }


def chunk_rates(params, num_frames: int, chunk_sizes, repeats: int) -> list[dict]:
  """``data.generate`` frames/s at each chunk size, interleaved."""
  seconds = interleaved_medians(
    {c: functools.partial(data.generate, params, num_frames, 0, chunk=c) for c in chunk_sizes},
    repeats,
  )
  return [{"chunk": c, "frames_per_s": num_frames / seconds[c]} for c in chunk_sizes]


def compression(preset, params, num_frames: int, repeats: int) -> list[dict]:
  """``np.savez`` against ``np.savez_compressed`` on the arrays of a simulated file: the
  counts as float32 and in the stored integer dtype, and the float32 expected image."""
  arrays = data.generate(params, num_frames, seed=0)
  candidates = {
    "images float32": arrays["images"],
    f"images {data.stored_images(arrays['images'], params.detector).dtype.name}": (
      data.stored_images(arrays["images"], params.detector)
    ),
    "expected float32": arrays["expected"],
  }
  sizes = {}

  def saver(save, name, array):
    def run():
      buffer = io.BytesIO()
      save(buffer, images=array)
      sizes[name, save.__name__] = buffer.tell()

    return run

  fns = {
    (name, save.__name__): saver(save, name, array)
    for name, array in candidates.items()
    for save in (np.savez, np.savez_compressed)
  }
  seconds = interleaved_medians(fns, repeats)
  return [
    {
      "array": name,
      "writer": writer,
      "bytes_per_frame": sizes[name, writer] / num_frames,
      "frames_per_s": num_frames / seconds[name, writer],
    }
    for name, writer in fns
  ]


def cli_rate(num_frames: int, regime: int) -> dict | None:
  """``experiments/simulate.py`` run whole (imports and compilation included): once with no
  compilation cache, then twice with a fresh one (the second run loads its programs)."""
  script = Path(__file__).resolve().parents[2] / "experiments" / "simulate.py"
  if not script.is_file():  # an installed package without the repository's scripts
    return None
  with tempfile.TemporaryDirectory() as tmp:
    command = [
      sys.executable,
      str(script),
      f"--regime={regime}",
      f"--num_images={num_frames}",
      f"--output={os.path.join(tmp, 'frames.npz')}",
    ]

    def seconds(cache: str) -> float:
      return process_seconds(command, {**os.environ, "QDJAX_COMPILATION_CACHE": cache})

    cold = seconds("0")
    seconds(os.path.join(tmp, "cache"))
    warm = seconds(os.path.join(tmp, "cache"))
  return {
    "command": " ".join(["python experiments/simulate.py"] + command[2:-1]),
    "num_frames": num_frames,
    "no_cache_seconds": cold,
    "no_cache_frames_per_s": num_frames / cold,
    "cached_seconds": warm,
    "cached_frames_per_s": num_frames / warm,
  }
