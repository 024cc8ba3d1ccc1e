"""``qd2pm``: qdjax's simulated two-photon frames as a TFDS dataset, built without TensorFlow.

One builder config per preset (``qd2pm/paper``). Example ``i`` of split ``s`` is frame ``i``
of ``experiments/simulate.py --seed=data.split_seed(seed, s)`` with the split's D: the
training range for ``train`` and ``validation``, regime k for ``test_dk``. Frames are
simulated on the device in large chunks and written to array_record files, which
``tfds.data_source`` reads with random access and no TensorFlow.

Build it with ``experiments/export_tfds.py`` (see ``qdjax.datasets.export``), or::

  builder = Builder(config="paper", data_dir=DIR, scale=0.01)
  builder.download_and_prepare(file_format="array_record")
"""

from __future__ import annotations

import json
import math
from importlib import metadata

import jax
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tqdm.auto import tqdm

from qdjax.sim import data, presets

# The splits of the export, at the study's sizes (qdjax.sim.presets' split_sizes).
SPLITS = ("train", "validation", "test_d1", "test_d2", "test_d3")

# Frames simulated per device call. Large enough to keep the device busy; every split
# uses one chunk size so a single compilation serves the whole export.
CHUNK = 4096

_DESCRIPTION = """\
Simulated two-photon raster-scan microscopy frames of diffusing quantum dots (QDs), from
qdjax. Each example is one frame: `image` holds the photon counts (Poisson), `keypoints`
the trajectory centroid of each QD in px (x = column, y = row, the centre of pixel (0, 0)
is (0, 0); NaN where absent), `present` whether that centroid lies inside the frame, `z`
its mean depth in um and `diffusion` the frame's D in um^2/s. `expected` (optional) is the
noise-free expected count image.

Splits follow the 2023 study: `train` (D log-uniform over the training range),
`validation` (same distribution, our addition) and one test set per experiment, `test_d1`,
`test_d2`, `test_d3`, at D1, D2 and D3. Example i of split s is frame i of
`experiments/simulate.py --seed=<metadata['splits'][s]['seed']>` with the split's D
(`--diffusion=lo:hi` of the training range, or `--regime=k`), so the data can be redrawn
exactly. The full parameter set, the split seeds and sizes and the
provenance of every value are in the dataset's metadata (`info.metadata`) and below.
"""


def _frame_features(height: int, width: int, particles: int, with_expected: bool):
  features = {
    "image": tfds.features.Tensor(shape=(height, width), dtype=np.float32),
    "keypoints": tfds.features.Tensor(shape=(particles, 2), dtype=np.float32),
    "present": tfds.features.Tensor(shape=(particles,), dtype=np.bool_),
    "z": tfds.features.Tensor(shape=(particles,), dtype=np.float32),
    "diffusion": tfds.features.Scalar(dtype=np.float32),
  }
  if with_expected:
    features["expected"] = tfds.features.Tensor(shape=(height, width), dtype=np.float32)
  return tfds.features.FeaturesDict(features)


def generation_record(preset_name: str, seed: int, scale: float, with_expected: bool) -> dict:
  """Everything that determines the export's content, as stored in its metadata.

  Returns:
    dict with ``preset``, ``seed``, ``scale``, ``with_expected``, ``params`` (docs/spec.md,
    section-1 values, regimes, training range, epsilons and provenance, as in
    ``simulate.py``'s ``params`` JSON), and ``splits``: per split its ``seed``,
    ``num_examples`` and ``diffusion_um2_s``.
  """
  preset = presets.get(preset_name)
  splits = {}
  for split in SPLITS:
    params = data.split_params(preset, split)
    splits[split] = {
      "seed": data.split_seed(seed, split),
      "num_examples": data.split_size(preset, split, scale),
      "diffusion_um2_s": params.to_dict()["diffusion_um2_s"],
    }
  record = {
    "preset": preset_name,
    "seed": seed,
    "scale": scale,
    "with_expected": with_expected,
    "params": data.params_record(data.split_params(preset, "train"), preset),
    "splits": splits,
    "frame_rule": "example i of split s = "
    "qdjax.sim.simulate.render(fold_in(key(splits[s].seed), i))"
    " with splits[s].diffusion_um2_s = frame i of experiments/simulate.py --seed=splits[s].seed",
  }
  # A JSON round trip turns tuples into lists, so a record compares equal to a stored one.
  return json.loads(json.dumps(record))


class Builder(tfds.core.GeneratorBasedBuilder):
  """Simulated 2PM QD frames, one config per qdjax preset.

  Generation settings are builder arguments rather than configs, so every export of a
  preset is read as ``qd2pm/<preset>`` whatever its size; they are recorded in
  ``info.metadata``.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    tfds.core.BuilderConfig(name=name, description=f"qdjax preset {name!r}")
    for name in presets.NAMES
  ]

  def __init__(
    self,
    *,
    scale: float = 1.0,
    seed: int = 0,
    with_expected: bool | None = None,
    **kwargs,
  ):
    """A builder; the generation settings only matter when it generates.

    Args:
      scale: split sizes are ``scale`` times the study's (at least one frame each).
      seed: user seed; split s uses ``data.split_seed(seed, s)``.
      with_expected: also store the noise-free ``expected`` image. None: as in the
        dataset already on disk (for reading), else False.
      **kwargs: DatasetBuilder's ``data_dir``, ``config`` (a preset name), ``version``.
    """
    if not (math.isfinite(scale) and scale > 0):
      raise ValueError(f"scale must be a positive number, got {scale}")
    if seed < 0:
      raise ValueError(f"seed must be >= 0, got {seed}")
    self._scale = float(scale)
    self._seed = int(seed)
    self._with_expected = with_expected
    super().__init__(**kwargs)
    # DatasetBuilder pickles itself from these (e.g. for multiprocess readers).
    self._original_state.update(scale=scale, seed=seed, with_expected=with_expected)

  # tfds 4.9.10 locates a builder inside a package through ``importlib_resources``, which
  # it does not install; the answer is this file, so say so directly.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  # TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared"
  # to stdout around every build; this dataset downloads nothing, and export prints its own
  # summary, so the lines would only mislead.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass

  def _stored_with_expected(self) -> bool:
    """Whether the dataset on disk, if any, has the ``expected`` feature."""
    path = self.data_path / "features.json"
    if not path.exists():
      return False
    return "expected" in json.loads(path.read_text())["featuresDict"]["features"]

  def _info(self) -> tfds.core.DatasetInfo:
    # info is computed once, after data_dir is known and before anything is read, so a
    # reader gets the features that were written.
    with_expected = self._with_expected
    if with_expected is None:
      with_expected = self._stored_with_expected()
    name = self.builder_config.name
    preset = presets.get(name)
    params = data.split_params(preset, "train")
    record = generation_record(name, self._seed, self._scale, with_expected)
    # Readers see the description in the code, so it holds only what every export of this
    # preset shares; seed, scale and split sizes are in the stored metadata.
    description = (
      _DESCRIPTION
      + "\nStudy-sized splits: "
      + ", ".join(f"{s} {data.split_size(preset, s)}" for s in SPLITS)
      + f" frames (info.splits has the exported counts).\n\nqdjax {metadata.version('qdjax')}. "
      + f"Parameters of preset {name!r} and their provenance:\n\n"
      + json.dumps(data.params_record(params, preset), indent=1, sort_keys=True)
    )
    return tfds.core.DatasetInfo(
      builder=self,
      description=description,
      features=_frame_features(params.height, params.width, params.max_particles, with_expected),
      # On disk the stored metadata replaces this, so readers see what was written.
      metadata=tfds.core.MetadataDict(
        record, qdjax_version=metadata.version("qdjax"), jax_version=jax.__version__
      ),
      # Example i must stay frame i of its split: write in key (frame index) order.
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded: every frame is simulated.
    preset = presets.get(self.builder_config.name)
    sizes = {split: data.split_size(preset, split, self._scale) for split in SPLITS}
    # One chunk size for all splits (one compilation): a tiny export uses tiny chunks.
    chunk = min(CHUNK, 1 << (max(sizes.values()) - 1).bit_length())
    return {split: self._generate_examples(preset, split, sizes[split], chunk) for split in SPLITS}

  def _generate_examples(self, preset, split: str, num_examples: int, chunk: int):
    """Yields (frame index, example), simulating ``chunk`` frames per device call."""
    params = data.split_params(preset, split)
    seed = data.split_seed(self._seed, split)
    with_expected = bool(self._with_expected)
    with tqdm(total=num_examples, desc=f"qd2pm/{split}", unit="frame") as bar:
      for start in range(0, num_examples, chunk):
        # Always a full chunk (the tail is trimmed) so every call reuses one compilation.
        frames = data.generate(params, chunk, seed, start=start, chunk=chunk)
        for j in range(min(chunk, num_examples - start)):
          example = {
            "image": frames["images"][j],
            "keypoints": frames["keypoints"][j],
            "present": frames["present"][j],
            "z": frames["z"][j],
            "diffusion": frames["diffusion"][j],
          }
          if with_expected:
            example["expected"] = frames["expected"][j]
          yield start + j, example
          bar.update(1)
