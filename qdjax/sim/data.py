"""Finite simulated datasets on the host: test sets, exported splits, ``simulate.py`` output.

Frame ``i`` of a dataset with seed ``s`` is ``render(fold_in(key(s), i))``, whatever the
chunking, so ``experiments/simulate.py``, ``evaluate.py`` and the TFDS export all agree
frame for frame. Training does not use this module: it simulates on the device.
"""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
from tqdm.auto import tqdm

from qdjax import chunks, io
from qdjax.sim import simulate

# Frames per device call. Measured by ``experiments/bench.py --what=simulate`` (its
# ``chunks`` rows): on the CPU, chunks of 512 frames ran fastest, 128 to 256 a little
# slower and 1024 or more at about half the rate (their working set spills out of the caches).
CHUNK = 512

# Unsigned integer types a file may store Poisson counts in, smallest first.
_COUNT_DTYPES = (np.uint8, np.uint16, np.uint32)


def generate(
  params: simulate.Params,
  num_images: int,
  seed: int,
  *,
  start: int = 0,
  chunk: int = CHUNK,
  progress: bool | str = False,
) -> dict[str, np.ndarray]:
  """Frames ``start .. start+num_images-1`` of the dataset with this seed, as NumPy arrays.

  Frames are drawn in chunks of ``chunk`` (the last one padded and trimmed; a dataset
  smaller than a chunk padded to a power of two), so one compilation serves a whole
  dataset, and datasets of many sizes share a few.

  Returns:
    dict with images [n, h, w] f32, expected [n, h, w] f32, keypoints [n, P, 2] f32 (NaN
    where absent), present [n, P] bool, z [n, P] f32, diffusion [n] f32.
  """
  if num_images < 0:
    raise ValueError(f"num_images must be >= 0, got {num_images}")
  desc = progress if isinstance(progress, str) else "simulate"
  with tqdm(total=num_images, unit="frame", disable=not progress, desc=desc) as bar:
    frames = chunks.map_chunks(
      functools.partial(simulate.simulate_indices, seed, params),
      np.arange(start, start + num_images),
      chunk,
      # The last chunk is padded, not run at its own length: a padded chunk costs a few ms,
      # a second compilation of the simulator seconds.
      powers_of_two=True,
      progress=bar,
    )
  return _arrays(frames)


def _arrays(frames: simulate.Frame) -> dict[str, np.ndarray]:
  """A Frame's arrays by their dataset names (``expected`` only where the Frame has it)."""
  named = {
    "images": (frames.counts, np.float32),
    "expected": (frames.expected, np.float32),
    "keypoints": (frames.keypoints, np.float32),
    "present": (frames.present, bool),
    "z": (frames.z, np.float32),
    "diffusion": (frames.diffusion, np.float32),
  }
  return {k: v.astype(t, copy=False) for k, (v, t) in named.items() if v is not None}


def stored_images(images: np.ndarray, detector: str) -> np.ndarray:
  """Recorded frames in the dtype a file keeps them in.

  Poisson counts are whole numbers: they are stored in the smallest unsigned integer type
  that holds the largest count (uint8 up to 255, then uint16, then uint32), exactly. PMT
  output is real-valued (Gamma pulses plus Gaussian dark noise, in output units): it stays
  float32, as computed, rather than being rounded to an ADC grid this simulator does not
  model.

  Args:
    images: [n, h, w] float32 recorded values, as ``generate`` returns them.
    detector: ``params.detector``, 'poisson' or 'pmt'.
  """
  if detector != "poisson":
    return images.astype(np.float32, copy=False)
  largest = float(images.max()) if images.size else 0.0
  dtype = next(t for t in _COUNT_DTYPES if largest <= np.iinfo(t).max)
  return images.astype(dtype)


def write(
  path,
  params: simulate.Params,
  num_images: int,
  seed: int,
  *,
  preset=None,
  chunk: int = CHUNK,
  integer_counts: bool = False,
  progress: bool | str = False,
) -> dict[str, np.ndarray]:
  """Simulates a dataset and writes it as an uncompressed .npz, atomically.

  The file holds ``generate``'s arrays (``images`` float32, the format of the command-line
  contract; with ``integer_counts``, in ``stored_images``' dtype: smaller files, but a user
  must cast before arithmetic), and ``params``, the JSON of ``params_record`` plus
  ``images_dtype`` and ``images_unit``.
  Nothing is compressed: deflate halves the size of small integer counts but runs slower
  than the simulator (measured by ``experiments/bench.py --what=simulate``), and the
  float32 arrays are noise that barely compresses. The expected images, most of the file,
  are written chunk by chunk while the next chunk computes.

  Returns:
    ``generate``'s arrays as written (``images`` float32), but ``expected``.
  """
  if num_images < 0:
    raise ValueError(f"num_images must be >= 0, got {num_images}")
  desc = progress if isinstance(progress, str) else "simulate"
  draw = functools.partial(simulate.simulate_indices, seed, params)
  parts = []
  with tqdm(total=num_images, unit="frame", disable=not progress, desc=desc) as bar:
    with io.npz_writer(path) as npz:
      shape = (num_images, params.height, params.width)
      with npz.stream("expected", shape, np.float32) as write_expected:
        for _, part in chunks.stream_chunks(draw, np.arange(num_images), chunk):
          write_expected(part.expected)
          parts.append(part.replace(expected=None))  # written: not kept in memory
          bar.update(len(part.expected))
      if parts:
        arrays = _arrays(jax.tree.map(lambda *xs: np.concatenate(xs), *parts))
      else:
        arrays = generate(params, 0, seed)
        del arrays["expected"]
      images = arrays["images"]
      if integer_counts:
        images = stored_images(images, params.detector)
      record = params_record(params, preset)
      record["images_dtype"] = images.dtype.name
      record["images_unit"] = "photons" if params.detector == "poisson" else "PMT output units"
      for name, array in arrays.items():
        npz.add(name, images if name == "images" else array)
      npz.add("params", json.dumps(record, sort_keys=True))
  return arrays


def params_record(params: simulate.Params, preset=None) -> dict:
  """The ``params`` JSON of docs/spec.md, section 6: every section-1 value, plus the preset's
  regimes, train_diffusion, epsilons_px and provenance."""
  record = params.to_dict()
  if preset is not None:
    extra = preset.to_dict()
    for key in ("preset", "regimes", "train_diffusion", "epsilons_px", "provenance"):
      record[key] = extra[key]
  return record


def params_json(params: simulate.Params, preset=None) -> str:
  return json.dumps(params_record(params, preset), sort_keys=True)


# Every finite dataset qdjax draws is one of these splits. Its seed is derived from the
# user's seed and the split, so the TFDS export, evaluate.py's test sets and a plain
# ``simulate.py --seed=split_seed(s, split)`` hold the same frames, and no two splits
# share frames. ``val_d*`` are per-regime validation sets for choosing trackpy's settings
# and for calibration; the ``test_d*`` sets are never used to choose anything.
SPLITS = ("train", "validation", "test_d1", "test_d2", "test_d3", "val_d1", "val_d2", "val_d3")


def split_seed(seed: int, split: str) -> int:
  """The dataset seed of ``split`` for a user seed (``seed * 100 + index``)."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
  if seed < 0:
    raise ValueError(f"seed must be >= 0, got {seed}")
  return seed * 100 + SPLITS.index(split)


def split_params(preset, split: str, **overrides) -> simulate.Params:
  """Simulation parameters of a split: the training D range, or regime k for *_dk."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
  if split[-3:-1] == "_d":
    return preset.sim_params(regime=int(split[-1]), **overrides)
  return preset.sim_params(diffusion=preset.train_diffusion, **overrides)


def split_size(preset, split: str, scale: float = 1.0) -> int:
  """Frames in a split at ``scale`` times the study's size (val_d* match validation/3)."""
  sizes = dict(preset.split_sizes)
  base = sizes[split] if split in sizes else sizes["validation"] // 3
  return max(1, round(base * scale))


def load_split(preset, split: str, seed: int = 0, scale: float = 1.0, progress=False, **overrides):
  """Generates a whole split: ``generate`` with the split's params, seed and size."""
  params = split_params(preset, split, **overrides)
  return generate(
    params, split_size(preset, split, scale), split_seed(seed, split), progress=progress
  )
