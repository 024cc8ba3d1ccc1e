"""Finite simulated datasets on the host: test sets, exported splits, ``simulate.py`` output.

Frame ``i`` of a dataset with seed ``s`` is ``render(fold_in(key(s), i))``, whatever the
chunking, so ``experiments/simulate.py``, ``evaluate.py`` and the TFDS export all agree
frame for frame. Training does not use this module: it simulates on the device.
"""

from __future__ import annotations

import json

import jax
import numpy as np
from tqdm.auto import tqdm

from qdjax import simulate


def generate(
  params: simulate.Params,
  num_images: int,
  seed: int,
  *,
  start: int = 0,
  chunk: int = 2048,
  progress: bool | str = False,
) -> dict[str, np.ndarray]:
  """Frames ``start .. start+num_images-1`` of the dataset with this seed, as NumPy arrays.

  Chunks have a fixed size (the last is padded and trimmed) so one compilation serves all.

  Returns:
    dict with images [n, h, w] f32, expected [n, h, w] f32, keypoints [n, P, 2] f32 (NaN
    where absent), present [n, P] bool, z [n, P] f32, diffusion [n] f32.
  """
  if num_images < 0:
    raise ValueError(f"num_images must be >= 0, got {num_images}")
  chunk = max(1, min(chunk, num_images))
  parts = []
  bar = tqdm(
    total=num_images,
    unit="frame",
    disable=not progress,
    desc=progress if isinstance(progress, str) else "simulate",
  )
  for offset in range(0, num_images, chunk):
    indices = np.arange(start + offset, start + offset + chunk)
    frames = jax.device_get(simulate.simulate_indices(seed, params, indices))
    keep = min(chunk, num_images - offset)
    parts.append(jax.tree.map(lambda x, keep=keep: np.asarray(x)[:keep], frames))
    bar.update(keep)
  bar.close()
  h, w, p = params.height, params.width, params.max_particles
  if not parts:
    return {
      "images": np.zeros((0, h, w), np.float32),
      "expected": np.zeros((0, h, w), np.float32),
      "keypoints": np.zeros((0, p, 2), np.float32),
      "present": np.zeros((0, p), bool),
      "z": np.zeros((0, p), np.float32),
      "diffusion": np.zeros((0,), np.float32),
    }
  cat = lambda name: np.concatenate([getattr(f, name) for f in parts])
  return {
    "images": cat("counts").astype(np.float32),
    "expected": cat("expected").astype(np.float32),
    "keypoints": cat("keypoints").astype(np.float32),
    "present": cat("present").astype(bool),
    "z": cat("z").astype(np.float32),
    "diffusion": cat("diffusion").astype(np.float32),
  }


def params_record(params: simulate.Params, preset=None) -> dict:
  """The ``params`` JSON of SPEC section 6: every section-1 value, plus the preset's
  regimes, train_diffusion, epsilons_px and provenance."""
  record = params.to_dict()
  if preset is not None:
    extra = preset.to_dict()
    for key in ("preset", "regimes", "train_diffusion", "epsilons_px", "provenance"):
      record[key] = extra[key]
  return record


def params_json(params: simulate.Params, preset=None) -> str:
  return json.dumps(params_record(params, preset), sort_keys=True)
