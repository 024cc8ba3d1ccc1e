"""Where training batches come from: a function of the step, chosen by ``config.data``.

A source must give the same batch for the same step, so a resumed run sees exactly the
batches it would have seen. A device source is traced into the jitted training step (the
batch is made on the device and never leaves it); a host source hands NumPy arrays over.

- ``simulate``: frames of the preset (or ``--diffusion``) simulated on the device.
- ``prior``: every frame its own microscope and scene (``qdjax.sim.prior``), frame sizes
  cycled by step.
- ``noise_free``: as ``simulate``, but the detector sees the noise-free expected image
  instead of the counts (the blur floor of docs/reproduction.md: what the raster scan's
  motion blur alone leaves to find).
- ``tfds``: batches of a TFDS export (``qdjax.datasets.loader``).

A new source is a factory with the signature of ``simulated`` added to ``SOURCES``:

    def my_source(config, *, preset, sim_params, data_key) -> Source:
      def draw(inputs, step, variant):
        prior, key = inputs
        frames = my_simulation(jax.random.fold_in(key, step), prior, config.batch_size)
        return Batch(frames.counts, frames.keypoints, frames.present)
      return Source(draw, inputs=(my_prior(preset), data_key))

``inputs`` (arrays: parameters, keys) reach ``draw`` as arguments of the jitted step, not
as constants folded into the compiled program, so the program does not change with their
values and computes exactly what the uncompiled function does. ``variant`` is a static
value chosen per step on the host (e.g. the frame size): each distinct one compiles its
own training step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax

from qdjax.sim import presets, simulate


class Batch(NamedTuple):
  """One training batch.

  Attributes:
    images: [b, h, w] photon counts.
    keypoints: [b, P, 2] (x, y) px, NaN where absent.
    present: [b, P] bool.
  """

  images: jax.Array
  keypoints: jax.Array
  present: jax.Array


@dataclasses.dataclass(frozen=True)
class Source:
  """A batch source.

  Attributes:
    draw: (inputs, step, variant) -> Batch; step is an int32 scalar, the first step is 1.
    inputs: a pytree of arrays handed to ``draw`` (e.g. simulation parameters and a key).
    on_device: True if ``draw`` is traceable by ``jax.jit`` (then it runs inside the
      training step); False for a host function, called with a Python int.
    variant: step (int) -> a hashable static value for ``draw`` (e.g. the frame size), or
      None (``draw`` gets None).
    reference_area: px, or None; the presence loss (a sum over pixels) of a batch of
      h x w frames is scaled by reference_area / (h w), so large frames do not take larger
      SGD steps.
    record: JSON-ready description of the distribution beyond the simulation parameters;
      stored with the checkpoints, so a run is not resumed on another distribution.
  """

  draw: Callable[[Any, jax.Array, Hashable], Batch]
  inputs: Any = None
  on_device: bool = True
  variant: Callable[[int], Hashable] | None = None
  reference_area: float | None = None
  record: dict | None = None


def simulated(config, *, sim_params: simulate.Params, data_key: jax.Array, **_) -> Source:
  """Frames simulated on the device: batch ``step`` from ``fold_in(data_key, step)``."""
  return _simulation(config, sim_params, data_key, "counts")


def noise_free(config, *, sim_params: simulate.Params, data_key: jax.Array, **_) -> Source:
  """As ``simulated``, with the noise-free expected image as the batch's images."""
  return _simulation(config, sim_params, data_key, "expected", record={"images": "expected"})


def _simulation(config, sim_params, data_key, images: str, record=None) -> Source:
  batch_size = config.batch_size

  def draw(inputs, step, variant):
    del variant  # one frame size
    sim_params, data_key = inputs
    frames = simulate.simulate_batch(jax.random.fold_in(data_key, step), sim_params, batch_size)
    return Batch(getattr(frames, images), frames.keypoints, frames.present)

  return Source(draw, inputs=(sim_params, data_key), record=record)


def prior(config, *, sim_params: simulate.Params, data_key: jax.Array, **_) -> Source:
  """Frames of ``qdjax.sim.prior`` (``config.prior``) on the device, sized by the step: batch
  ``step`` from ``fold_in(data_key, step)``; dwell, retrace and substeps from the preset."""
  from qdjax.sim import prior as prior_lib

  if "prior" not in config:
    raise ValueError("config.data='prior' needs a config.prior block (qdjax.sim.prior.config())")
  distribution = prior_lib.from_config(config.prior)
  batch_size = config.batch_size

  def draw(inputs, step, size):
    base, data_key = inputs
    frames = prior_lib.draw(
      jax.random.fold_in(data_key, step), distribution, base, *size, batch_size
    )
    return Batch(frames.counts, frames.keypoints, frames.present)

  return Source(
    draw,
    inputs=(sim_params, data_key),
    variant=distribution.frame_size,
    reference_area=distribution.reference_area,
    record={"prior": distribution.to_dict()},
  )


def tfds(config, **_) -> Source:
  """Batches of a TFDS export (``qdjax.datasets.loader``): batch ``step`` is the loader's
  batch ``step - 1``, read ahead by its threads while steps come in order."""
  from qdjax.datasets import loader  # only this source needs the TFDS reader

  reader = {"next_step": None, "batches": None}

  def draw(inputs, step, variant):
    del inputs, variant  # the export is all there is
    step = int(step)
    if step != reader["next_step"]:  # the first call, or a jump: (re)open at this step
      reader["batches"] = loader.iterate_batches(
        config.tfds_data_dir,
        config.tfds_name,
        config.tfds_split,
        config.batch_size,
        config.seed,
        step - 1,
      )
    reader["next_step"] = step + 1
    batch = next(reader["batches"])
    return Batch(batch["images"], batch["keypoints"], batch["present"])

  return Source(draw, on_device=False)


SOURCES = {"simulate": simulated, "noise_free": noise_free, "prior": prior, "tfds": tfds}


def make(
  config,
  *,
  preset: presets.Preset,
  sim_params: simulate.Params,
  data_key: jax.Array,
) -> Source:
  """The source named by ``config.data``."""
  if config.data not in SOURCES:
    raise ValueError(f"config.data must be one of {', '.join(SOURCES)}, got {config.data!r}")
  return SOURCES[config.data](config, preset=preset, sim_params=sim_params, data_key=data_key)
