"""Localisation throughput of every method on the same frames, in one run.

``python experiments/bench.py --what=locate``: frames/s of the shipped model (or none if
no weights are shipped yet), the MLE fit and trackpy (single process, to compare with
trackpy's ~400 frames/s on one core, and with its worker pool), on test_d2-like frames of
the paper preset. Each locator is warmed up (compiled) first; timings are medians.
"""

from __future__ import annotations

from qdjax import data, locator, presets
from qdjax.benchmarks import median_seconds


def run(repeats: int = 5, quick: bool = False) -> dict:
  preset = presets.get("paper")
  n = 256 if quick else 2048
  images = data.generate(preset.sim_params(regime=2), n, seed=321)["images"]
  locators = {
    "trackpy_1_process": locator.make("trackpy", preset=preset, workers=1),
    "trackpy_pool": locator.make("trackpy", preset=preset),
    "mle": locator.make("mle"),
  }
  try:
    locators["model"] = locator.make("model")
  except FileNotFoundError as e:
    locators["model"] = None
    model_notice = str(e)
  else:
    model_notice = None
  rows = {}
  for name, locate in locators.items():
    if locate is None:
      continue
    # The warm-up call compiles (model, mle) or starts the worker pool (trackpy).
    seconds = median_seconds(lambda locate=locate: locate(images), repeats=repeats, warmup=1)
    rows[name] = {"frames": n, "seconds": seconds, "frames_per_s": n / seconds}
  result = {"what": "locate", "preset": preset.name, "frame": list(images.shape[1:]), "rows": rows}
  if "model" in rows:
    ratio = rows["model"]["frames_per_s"] / rows["trackpy_1_process"]["frames_per_s"]
    result["model_vs_trackpy_1_process"] = ratio
    result["targets"] = {"model>=10x_trackpy_1_process": ratio >= 10}
  else:
    result["model_notice"] = model_notice
  return result
