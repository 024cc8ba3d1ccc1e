"""Deterministic training batches from a TFDS export (``tfds.data_source`` + grain).

Batch ``step`` depends only on (seed, step): examples are drawn through a grain index
shuffle that is reseeded every epoch, so a resumed run that starts at ``start_step``
sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grain
import numpy as np
import tensorflow_datasets as tfds

# Feature names in the export -> the names of ``qdjax.sim.data.generate``'s arrays.
_RENAME = {"image": "images"}


def open_split(data_dir: str | Path, name: str = "qd2pm/paper", split: str = "train"):
  """A random-access source of one split: ``len(source)``, ``source[i]`` -> dict.

  The same as ``tfds.data_source(name, data_dir=data_dir, download=False)[split]``.

  Raises:
    FileNotFoundError: no such export under ``data_dir``.
    ValueError: the export has no split ``split``.
  """
  data_dir = Path(data_dir).expanduser()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    builder = None
  # Checked here because with qdjax imported the builder is registered, and
  # tfds.data_source(download=True) would quietly generate a missing export in place.
  if builder is None or not builder.is_prepared():
    raise FileNotFoundError(
      f"no TFDS dataset {name!r} under {data_dir}; write it with "
      f"experiments/export_tfds.py --data_dir={data_dir}"
    )
  sources = builder.as_data_source()
  if split not in sources:
    raise ValueError(f"{name} under {data_dir} has no split {split!r}; it has {sorted(sources)}")
  return CheckedSource(sources[split], f"{builder.data_path} split {split!r}")


class CheckedSource:
  """A TFDS data source whose damaged records raise a one-line ``ValueError``.

  The array_record reader raises a bare ``RuntimeError`` ("Corrupted Riegeli/records
  file: ...") on a damaged file; this names the dataset and split instead.
  """

  def __init__(self, source, where: str):
    self._source = source
    self._where = where

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    try:
      return self._source[index]
    except RuntimeError as e:
      detail = str(e).strip().splitlines()[0] if str(e).strip() else "unreadable record"
      raise ValueError(f"{self._where} is corrupt ({detail}); export it again") from None


def iterate_batches(
  data_dir: str | Path,
  name: str = "qd2pm/paper",
  split: str = "train",
  batch_size: int = 32,
  seed: int = 0,
  start_step: int = 0,
  *,
  num_threads: int = 4,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless shuffled batches of one split, from ``start_step`` on.

  Every epoch is a fresh permutation of the split (seeded by ``seed`` and the epoch);
  batches run across epoch boundaries, so every batch is full.

  Args:
    data_dir: TFDS data directory holding the export.
    name: dataset/config, e.g. ``qd2pm/paper``.
    split: e.g. ``train``.
    batch_size: frames per batch.
    seed: shuffle seed, 0 <= seed < 2**32.
    start_step: index of the first batch to yield (to resume a run).
    num_threads: reader threads that prefetch upcoming batches.

  Yields:
    dicts with images [b, h, w] f32 (counts), keypoints [b, P, 2] f32 (px, NaN where
    absent), present [b, P] bool, z [b, P] f32, diffusion [b] f32, and expected
    [b, h, w] f32 if the export has it.

  Raises:
    FileNotFoundError, ValueError: see ``open_split``; a bad batch size, seed or step.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if not 0 <= seed < 2**32:
    raise ValueError(f"seed must be in [0, 2**32), got {seed}")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  source = open_split(data_dir, name, split)
  dataset = (
    grain.MapDataset.source(source)
    .shuffle(seed=seed)
    .repeat()  # Each epoch is shuffled with its own seed.
    .batch(batch_size, drop_remainder=True)
    .map(_as_arrays)
  )
  # Random access: skipping to a step costs nothing, no batches are read and dropped.
  dataset = dataset[start_step:]
  read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
  return iter(dataset.to_iter_dataset(read_options))


def _as_arrays(batch: dict) -> dict[str, np.ndarray]:
  # Scalars come back from TFDS as Python floats; keep the simulator's float32.
  out = {_RENAME.get(key, key): np.asarray(value) for key, value in batch.items()}
  out["diffusion"] = out["diffusion"].astype(np.float32)
  return out
