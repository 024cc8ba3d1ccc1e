"""Localisation throughput of every method on the same frames, side by side in one run.

``python experiments/bench.py --what=locate``: frames/s of every shipped model, the MLE fit
and trackpy (single process, and with its worker pool) on two kinds of frames:

- ``crops``: 24 x 25 frames of the paper preset (regime 2), one QD each;
- ``fields``: whole 512 x 512 fields of the paper preset (regime 2) with 20 QDs each
  (``tradeoff.fields``); the MLE fits one spot per frame, so it is timed on crops only.
  The default model is also timed through the cascade (``qdjax.detect.cascade``: the
  network on windows around candidate tiles only), ``model_<name>_cascade``.

Every locator gets the whole stack in one call, as ``locate.py`` passes it a chunk of a
file (the model splits it into its own jitted calls), after a warm-up call (compilation,
the worker pool's start); the locators run in turn within each repeat, and timings are
medians. The targets compare each shipped model with single-process ``trackpy.locate``: at
least 5x its frames/s on crops and 3x on fields. ``general``, the default before
``general_fast``, is timed beside the default whenever both are shipped.
"""

from __future__ import annotations

import jax

from benchmarks import interleaved_medians, tradeoff
from qdjax.detect import inference
from qdjax.localize import locator
from qdjax.sim import presets

TARGETS = {"crops": 5.0, "fields": 3.0}  # x single-process trackpy's frames/s


def run(repeats: int = 5, quick: bool = False) -> dict:
  preset = presets.get("paper")
  frames = {
    "crops": tradeoff.crops(64 if quick else 2048),
    "fields": tradeoff.fields(1 if quick else 8, size=128 if quick else 512),
  }
  locators = {
    "trackpy_1_process": locator.make("trackpy", preset=preset, workers=1),
    "trackpy_pool": locator.make("trackpy", preset=preset),
    "mle": locator.make("mle"),
  }
  shipped = inference.shipped_models()
  default = inference.default_model() if shipped else None
  if quick and shipped:  # a smoke test of the code path: the default model alone
    shipped = (default,)
  for name in shipped:
    locators[f"model_{name}"] = locator.make("model", model=name)
  if default is not None:
    locators[f"model_{default}_cascade"] = inference.load(model=default, cascade=True)
  rows = {}
  for kind, images in frames.items():
    calls = {
      name: lambda locate=locate, images=images: locate(images)
      for name, locate in locators.items()
      # The MLE fits one spot per frame; the cascade runs whole crops through the network.
      if not (
        (name == "mle" and kind == "fields") or (name.endswith("_cascade") and kind == "crops")
      )
    }
    # The warm-up call compiles (model, mle) or starts the worker pool (trackpy); the
    # locators then run in turn within each repeat, so a passing load falls on all alike.
    seconds = interleaved_medians(calls, repeats=repeats, warmup=1)
    rows[kind] = {
      name: {"frames": len(images), "seconds": t, "fps": len(images) / t}
      for name, t in seconds.items()
    }
    reference = rows[kind]["trackpy_1_process"]["fps"]
    for row in rows[kind].values():
      row["vs_trackpy_1_process"] = row["fps"] / reference
  result = {
    "what": "locate",
    "device": str(jax.devices()[0]),
    "preset": preset.name,
    "frames": {kind: list(images.shape) for kind, images in frames.items()},
    "fields_qds": 20,
    "default_model": default,
    "models": {name: inference.load(model=name).model_config["name"] for name in shipped},
    "rows": rows,
  }
  # Each shipped model against the targets: the fast one is there to meet them.
  result["targets"] = {
    f"model_{name}": {
      f"{kind} >= {target:g}x trackpy_1_process": (
        rows[kind][f"model_{name}"]["vs_trackpy_1_process"] >= target
      )
      for kind, target in TARGETS.items()
    }
    for name in shipped
  }
  return result
