"""Speed against accuracy of detector architectures, at an equal training budget.

``python experiments/bench.py --what=tradeoff [--train_frames=N] [--models=a,b]``

Each model preset is trained with the shipped model's recipe (``experiments/configs/
pretrained.py``: batch, learning rate, schedule; only the number of steps is set by the
budget) on the paper preset, then scored on validation frames drawn with a seed that
training never used (``val_d1..3`` at ``data.split_seed(VALIDATION_SEED, ...)``): the mean
AUC over the nine cells (3 regimes x epsilon 1, 2, 3 px), the same quantity as the mean of
the study's table. The shipped model is scored on the same frames. Speed is frames/s of
``inference.Locator`` (forward + decode) on 24 x 25 crops and on whole 512 x 512 fields
with 20 QDs, beside single-process trackpy on the same frames in the same run.

Architectures are chosen on these validation frames, never on the test splits.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks import median_seconds
from qdjax import io
from qdjax.detect import inference, train
from qdjax.evaluation import metrics
from qdjax.localize import locator as locator_lib
from qdjax.sim import data, presets

MODELS = ("base", "small", "fast", "s2", "s2_light", "s4", "s4_light")
VALIDATION_SEED = 1  # training selects its best checkpoint on seed 0's validation frames


def fields(num_frames: int, size: int = 512, qds: int = 20, seed: int = 5) -> np.ndarray:
  """Whole fields of the paper preset (regime 2) with ``qds`` QDs each: [n, size, size]."""
  params = presets.get("paper").sim_params(
    regime=2, height=size, width=size, num_particles=(qds, qds)
  )
  return data.generate(params, num_frames, seed=seed, chunk=1)["images"]


def crops(num_frames: int, seed: int = 321) -> np.ndarray:
  """24 x 25 paper-preset frames (regime 2): [n, 24, 25]."""
  return data.generate(presets.get("paper").sim_params(regime=2), num_frames, seed=seed)["images"]


def speeds(locator, crop_frames, field_frames, repeats: int) -> dict:
  """frames/s of ``locator`` on crops (one call on all) and on fields (one call each)."""
  t_crop = median_seconds(lambda: locator(crop_frames), repeats)
  t_field = median_seconds(lambda: [locator(f[None]) for f in field_frames], repeats)
  return {
    "crop_frames_per_s": len(crop_frames) / t_crop,
    "field_frames_per_s": len(field_frames) / t_field,
  }


def validation_auc(locator, sets, epsilons) -> dict:
  """Mean AUC over the splits x epsilons, and each cell."""
  cells = {}
  for split, frames in sets.items():
    found = locator(frames["images"])
    for e in epsilons:
      cells[f"{split}_eps{e:g}"] = metrics.auc(found, frames["keypoints"], frames["present"], e)
  return {"mean_auc": float(np.mean(list(cells.values()))), "cells": cells}


def run(
  config,
  repeats: int = 5,
  quick: bool = False,
  train_frames: int | None = None,
  models: tuple[str, ...] | None = None,
  workdir: str | None = None,
  scale: float = 1.0,
  partial_output: str | None = None,
  time_budget_s: float | None = None,
) -> dict:
  """Trains each of ``models`` on ``train_frames`` frames and measures speed and AUC.

  Args:
    config: the training config every model is trained with (its model name and number of
      steps replaced): ``experiments/configs/pretrained.py``, the shipped model's recipe.
    repeats: timed repeats (median).
    quick: a smoke-test size (tiny budget and sets).
    train_frames: training budget per model (default: 64k, or 16 with ``quick``).
    models: model presets (default ``MODELS``).
    workdir: where the training runs go (default: workdirs/tradeoff).
    scale: validation set size factor (1: 667 frames per regime).
    partial_output: if given, the JSON so far is written there after each model.
    time_budget_s: if given, no further model is started once the time spent plus the
      last model's time would exceed this; the ones left out are listed as ``skipped``.
  """
  began = time.perf_counter()
  base_config = config
  preset = presets.get("paper")
  models = tuple(models or (("tiny",) if quick else MODELS))
  train_frames = train_frames or (16 if quick else 65536)
  root = Path(workdir or "workdirs/tradeoff")
  sets = {
    split: data.load_split(preset, split, VALIDATION_SEED, 0.05 if quick else scale)
    for split in ("val_d1", "val_d2", "val_d3")
  }
  crop_frames = crops(64 if quick else 1024)
  field_frames = fields(1 if quick else 4, size=128 if quick else 512)
  tp = locator_lib.make("trackpy", preset=preset, workers=1)
  reference = speeds(tp, crop_frames, field_frames, repeats)
  rows = {"trackpy_1_process": reference}

  def summary():
    for row in rows.values():
      row["crop_vs_trackpy"] = row["crop_frames_per_s"] / reference["crop_frames_per_s"]
      row["field_vs_trackpy"] = row["field_frames_per_s"] / reference["field_frames_per_s"]
    return {
      "what": "tradeoff",
      "preset": preset.name,
      "device": str(jax.devices()[0]),
      "validation": f"val_d1..3 at seed {VALIDATION_SEED}, {len(sets['val_d1']['images'])} each",
      "field": list(field_frames.shape[1:]) + ["20 QDs"],
      "rows": rows,
    }

  def checkpoint():
    if partial_output is not None:
      io.write_text(partial_output, json.dumps(summary(), indent=2) + "\n")

  try:
    shipped = inference.load()
  except FileNotFoundError:
    shipped = None
  if shipped is not None:
    rows["shipped"] = {
      "model": shipped.model_config["name"],
      **validation_auc(shipped, sets, preset.epsilons_px),
      **speeds(shipped, crop_frames, field_frames, repeats),
    }
    checkpoint()
  skipped, last = [], 0.0
  for name in models:
    if time_budget_s is not None and time.perf_counter() - began + last > time_budget_s:
      skipped.append(name)
      continue
    model_start = time.perf_counter()
    config = base_config.copy_and_resolve_references()
    config.model.name = name
    config.progress = False
    config.num_steps = max(1, train_frames // config.batch_size)
    config.warmup_steps = min(config.warmup_steps, config.num_steps // 10)
    every = max(1, config.num_steps // 4)
    config.eval_every = config.checkpoint_every = every
    config.log_every = min(config.log_every, every)
    start = time.perf_counter()
    result = train.train_and_evaluate(config, root / f"{name}_{train_frames}")
    train_seconds = time.perf_counter() - start
    locator = inference.load(root / f"{name}_{train_frames}")
    rows[name] = {
      "num_params": result["num_params"],
      "train_frames": config.num_steps * config.batch_size,
      "train_seconds": train_seconds,
      **validation_auc(locator, sets, preset.epsilons_px),
      **speeds(locator, crop_frames, field_frames, repeats),
    }
    last = time.perf_counter() - model_start
    checkpoint()
  return {**summary(), "skipped": skipped}
