"""Writing (and re-checking) the ``qd2pm`` TFDS export: array_record, no TensorFlow.

TFDS builds a dataset in ``<data_dir>/qd2pm/<preset>/incomplete.XXXXXX_1.0.0`` and renames
it to ``.../1.0.0`` only once every split and ``dataset_info.json`` are written, so an
interrupted export never leaves a directory that readers take for a dataset. A second
export to the same place generates nothing: it checks that the stored dataset was made
with the same settings and redraws a few frames to confirm they still match the simulator.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from qdjax.datasets.qd2pm import SPLITS, Builder, generation_record
from qdjax.sim import data, presets

_LOG = logging.getLogger(__name__)


def export(
  data_dir: str | Path,
  preset: str = "paper",
  *,
  scale: float = 1.0,
  seed: int = 0,
  with_expected: bool = False,
) -> tuple[Builder, bool]:
  """Writes ``qd2pm/<preset>`` under ``data_dir``, or verifies the one already there.

  Args:
    data_dir: TFDS data directory; created if missing, but its parent must exist.
    preset: a ``qdjax.sim.presets`` name (the builder config).
    scale: split sizes relative to the study's (e.g. 0.01 for a quick export).
    seed: user seed; split s uses ``data.split_seed(seed, s)``.
    with_expected: also store the noise-free ``expected`` image.

  Returns:
    (builder, built): ``built`` is False when an identical export was already there.

  Raises:
    FileNotFoundError: ``data_dir``'s parent does not exist.
    NotADirectoryError: ``data_dir`` is a file.
    ValueError: a bad preset, scale or seed, or ``data_dir`` already holds this preset
      exported with other settings or other values.
  """
  data_dir = Path(data_dir).expanduser().absolute()
  if not data_dir.parent.is_dir():
    raise FileNotFoundError(f"data_dir's parent directory does not exist: {data_dir.parent}")
  if data_dir.exists() and not data_dir.is_dir():
    raise NotADirectoryError(f"data_dir is not a directory: {data_dir}")
  presets.get(preset)  # A bad name fails here, naming the known presets.
  builder = Builder(
    config=preset, data_dir=data_dir, scale=scale, seed=seed, with_expected=with_expected
  )
  wanted = generation_record(preset, seed, scale, with_expected)
  if builder.data_path.exists():
    verify(builder, wanted)
    return builder, False
  for leftover in builder.data_path.parent.glob(f"incomplete.*_{builder.version}"):
    _LOG.warning("ignoring %s, left by an interrupted export; delete it", leftover)
  # Our per-split bars know their totals; TFDS's own nested bars would only add noise.
  tfds.disable_progress_bar()
  config = tfds.download.DownloadConfig(try_download_gcs=False)
  with tempfile.TemporaryDirectory() as downloads, _sigterm_as_interrupt():
    builder.download_and_prepare(
      download_dir=downloads, download_config=config, file_format="array_record"
    )
  return builder, True


def verify(builder: Builder, wanted: dict[str, Any], frames_per_split: int = 2) -> None:
  """Checks a stored export against ``wanted`` (a ``generation_record``).

  Compares the stored generation record, each split's size and files, and redraws the
  first and last frames of every split to compare them with what is stored.

  Raises:
    ValueError: naming the first difference.
  """
  where = f"{builder.data_path} already holds qd2pm/{builder.builder_config.name}"
  stored = {key: builder.info.metadata.get(key) for key in wanted}
  difference = _first_difference(stored, wanted)
  if difference:
    raise ValueError(f"{where} exported with other settings ({difference}); use another data_dir")
  from qdjax.datasets.loader import CheckedSource

  source = builder.as_data_source()
  for split in SPLITS:
    info = wanted["splits"][split]
    n = info["num_examples"]
    if (
      split not in builder.info.splits
      or builder.info.splits[split].num_examples != n
      or len(source[split]) != n
    ):
      raise ValueError(f"{where} with a damaged split {split!r}: expected {n} examples")
    params = data.split_params(presets.get(wanted["preset"]), split)
    stored_split = CheckedSource(source[split], f"{builder.data_path} split {split!r}")
    for index in sorted({0, n - 1})[:frames_per_split]:
      example = stored_split[index]  # a damaged file fails here, before any simulation
      redrawn = data.generate(params, 1, info["seed"], start=index, chunk=1)
      if not (
        np.array_equal(example["image"], redrawn["images"][0])
        # Counts must match exactly; a keypoint is a float32 mean whose last bits depend on
        # how XLA vectorises the batch it was drawn in, so it gets a 1e-4 px tolerance.
        and np.allclose(
          example["keypoints"], redrawn["keypoints"][0], rtol=0, atol=1e-4, equal_nan=True
        )
      ):
        raise ValueError(
          f"{where} whose {split} frame {index} differs from the simulator's; the "
          "simulator changed since the export, so export to another data_dir"
        )


def _first_difference(stored, wanted, path: str = "") -> str | None:
  """``'params.peak_photons: 3.0 stored, 3.4 now'`` for the first differing leaf, or None."""
  if isinstance(wanted, dict) and isinstance(stored, dict):
    for key in wanted:
      difference = _first_difference(stored.get(key), wanted[key], f"{path}.{key}" if path else key)
      if difference:
        return difference
    return None
  if stored != wanted:
    return f"{path}: {stored!r} stored, {wanted!r} now"
  return None


@contextlib.contextmanager
def _sigterm_as_interrupt():
  """Lets a SIGTERM unwind like Ctrl-C, so TFDS deletes its incomplete directory."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def interrupt(signum, frame):
    from qdjax import cli

    raise cli.Terminated(f"signal {signum}")

  previous = signal.signal(signal.SIGTERM, interrupt)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)
