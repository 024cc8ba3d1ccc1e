"""Validation during training: fixed frames, AUCs, and the score that picks the best step.

The validation frames are drawn once, each split from its own derived seed
(``data.split_seed(config.validation_seed, split)``), never from the training key, so
every validation of a run, and of a resumed run, sees the same frames.

The best checkpoint is chosen by the mean validation AUC over the validation splits and
epsilons 1, 2, 3 px (for the default val_d1..3 splits: the mean of the nine cells of the
study's table), as the study kept the best of its 20 epochs by validation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from qdjax.evaluation import metrics
from qdjax.sim import data, presets, simulate


def splits(config) -> list[str]:
  """The split names of ``config.validation_splits`` ('val_d1,val_d2' -> [...])."""
  return [s.strip() for s in str(config.validation_splits).split(",") if s.strip()]


def check_splits(config) -> None:
  """Raises ValueError naming a configured split that is not a validation split."""
  for split in splits(config):
    name = split.split(":")[-1]  # 'preset:split' validates on another preset's frames
    if name not in data.SPLITS or name.startswith("test") or split.count(":") > 1:
      raise ValueError(f"config.validation_splits: {split!r} is not a validation split")


def validation_sets(
  config, preset: presets.Preset, train_params: simulate.Params, **overrides
) -> dict[str, dict[str, np.ndarray]]:
  """The fixed validation frames: split -> {images, keypoints, present}.

  With ``config.data='noise_free'`` the images are the noise-free expected images, as the
  detector sees in training.

  Args:
    config: the training config (validation_splits, validation_size, validation_seed).
    preset: the simulation preset.
    train_params: the training distribution, used for the 'train' and 'validation' splits
      (so a --diffusion choice reaches them); the val_dk splits use regime k. A split named
      'preset:split' is that preset's split, without ``overrides``.
    **overrides: simulation values that replace the preset's, as in training.
  """
  image = "expected" if config.get("data") == "noise_free" else "images"
  sets = {}
  for split in splits(config):
    if ":" in split:  # another preset's split, e.g. 'invivo:val_d1', at its own values
      preset_name, name = split.split(":")
      params = data.split_params(presets.get(preset_name), name)
      frames = data.generate(
        params, config.validation_size, data.split_seed(config.validation_seed, name)
      )
      sets[split] = {
        "images": frames[image],
        "keypoints": frames["keypoints"],
        "present": frames["present"],
      }
      continue
    if split in ("validation", "train"):
      params = train_params
    else:
      params = data.split_params(preset, split, **overrides)
    seed = data.split_seed(config.validation_seed, split)
    frames = data.generate(params, config.validation_size, seed)
    sets[split] = {
      "images": frames[image],
      "keypoints": frames["keypoints"],
      "present": frames["present"],
    }
  return sets


def validate(
  locate: Callable[[np.ndarray], list],
  sets: dict[str, dict[str, np.ndarray]],
  epsilons: Sequence[float],
) -> dict[str, Any]:
  """Validation AUCs per split and pooled, and the selection score.

  Args:
    locate: images [n, h, w] -> list of n arrays [k, 3] (x, y, score).
    sets: from ``validation_sets``.
    epsilons: match radii, px.

  Returns:
    {"auc": {eps: pooled AUC}, "auc_by_split": {split: {eps: AUC}}, "score": mean of the
    per-split AUCs over splits and epsilons}.
  """
  by_split, pooled_dets, pooled_kp, pooled_present = {}, [], [], []
  for split, frames in sets.items():
    dets = locate(frames["images"])
    by_split[split] = {
      eps_key(e): metrics.auc(dets, frames["keypoints"], frames["present"], e) for e in epsilons
    }
    pooled_dets += dets
    pooled_kp.append(frames["keypoints"])
    pooled_present.append(frames["present"])
  kp, present = np.concatenate(pooled_kp), np.concatenate(pooled_present)
  pooled = {eps_key(e): metrics.auc(pooled_dets, kp, present, e) for e in epsilons}
  score = float(np.mean([v for cells in by_split.values() for v in cells.values()]))
  return {"auc": pooled, "auc_by_split": by_split, "score": score}


def eps_key(epsilon: float) -> str:
  """The JSON key of a match radius: 1.0 -> '1'."""
  return f"{epsilon:g}"
