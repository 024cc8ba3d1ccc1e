"""False detections on textured and moving backgrounds (``bench.py --what=texture``).

Movies of 96 x 96 px with 8 QDs in focus at D = 0.2 um^2/s, located by each shipped model
(and ``--workdir``'s, named ``workdir``) without a threshold, then cut at the movie's own
score split or, without one, the localiser's default cut (``tracking.choose_min_score``,
what ``track_movie`` does by default). Backgrounds:

  * ``invivo_flat``: the ``invivo`` preset's microscope (PMT, 0.2 um pixels), flat
    background, no tissue motion;
  * ``invivo_texture``: its textured background (``preset.tissue_params(on=True)``:
    log-normal, relative sd 0.5, correlation length 0.4 um), no motion;
  * ``invivo_texture_moving``: the same background with the preset's tissue motion
    (breathing 1 um along (0, 1, 0.5), heartbeat 8 Hz, drift);
  * ``independent_texture``, ``independent_texture_moving``: movies of another simulator
    (``experiments/independent_sim.py``: Poisson counts, 0.1 um pixels, texture_cv=0.5;
    breathing 1 um and heartbeat 0.25 um when moving).

Each model runs twice: ``<name>`` localises the movie's own frames (as ``track_movie`` with
``background=False``), ``<name>+background`` adds ``track_movie``'s default background step
(``tracking.without_background``: where the movie's static background, read with the QDs
left out, has structure, the movie is localised again less it).

PMT output is converted back to photons with the preset's gain and offset, as a user would
with ``calibrate_pmt.py``'s result. A detection is false when no QD of its frame lies
within ``RADIUS_PX``; recall is the share of QDs inside the field with a detection within
it. Per model and background: detections per frame before and after the split, the false
share after it, recall, and in how many movies the split was found.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from qdjax.sim import movie, presets
from qdjax.tracks import tracking

SIZE, QDS, D = 96, 8, 0.2
RADIUS_PX = 2.0
BREATHING_UM = 1.0  # half peak-to-peak
INVIVO = ("invivo_flat", "invivo_texture", "invivo_texture_moving")
INDEPENDENT = ("independent_texture", "independent_texture_moving")


def invivo_params(background: str, frames: int, size: int = SIZE, qds: int = QDS):
  """MovieParams of the ``invivo`` preset for one of ``INVIVO``'s backgrounds."""
  preset = presets.get("invivo")
  frame = preset.sim_params(
    diffusion=D, height=size, width=size, num_particles=qds, sigma_z_um=1e3, margin_px=0.0
  )
  if background == "invivo_flat":
    tissue = preset.tissue_params(on=False)
  elif background == "invivo_texture":
    tissue = preset.tissue_params(on=True, breathing_um=0.0, heartbeat_um=0.0, drift_um_s=0.0)
  elif background == "invivo_texture_moving":
    tissue = preset.tissue_params(on=True)
  else:
    raise ValueError(f"unknown background {background!r}")
  return movie.make_params(frame, frames, tissue=tissue)


def _photons(counts, frame):
  if frame.detector != "pmt":
    return counts
  return (counts - float(frame.pmt_offset)) * float(frame.pmt_alpha) / 3.0


def invivo_movies(background: str, movies: int, frames: int, seed: int, size: int = SIZE):
  """[(frames [T, h, w] photons, truth: per frame an [k, 2] array of (x, y) px)]."""
  params = invivo_params(background, frames, size)
  out = jax.device_get(movie.simulate_movies(jax.random.key(seed), params, movies))
  counts = _photons(np.asarray(out.counts), params.frame)
  result = []
  for m in range(movies):
    centroids, present = np.asarray(out.centroids[m]), np.asarray(out.present[m])
    truth = [centroids[t][present[t]] for t in range(frames)]
    result.append((counts[m], truth))
  return result


def independent_movies(background: str, movies: int, frames: int, seed: int, size: int = SIZE):
  """As ``invivo_movies``, from ``experiments/independent_sim.py``."""
  import independent_sim

  moving = background == "independent_texture_moving"
  if background not in INDEPENDENT:
    raise ValueError(f"unknown background {background!r}")
  result = []
  for m in range(movies):
    counts, table, _ = independent_sim.movie(
      seed + m,
      size=size,
      frames=frames,
      qds=QDS,
      diffusion_um2_s=D,
      texture_cv=0.5,
      breathing_um=BREATHING_UM if moving else 0.0,
      heartbeat_um=0.25 if moving else 0.0,
    )
    truth = [table.loc[table["frame"] == t, ["x", "y"]].to_numpy() for t in range(frames)]
    result.append((counts, truth))
  return result


def spot_px(background: str) -> float:
  """The QDs' spot sd in px on ``background``'s movies (the invivo preset's PSF on its
  0.2 um pixels; the independent simulator's 0.2 um PSF on its 0.1 um pixels)."""
  if background in INVIVO:
    preset = presets.get("invivo")
    return float(preset.values["sigma_xy_um"]) / float(preset.values["pixel_size_um"])
  return 0.2 / 0.1


def _inside(xy, size):
  return xy[np.all((xy >= -0.5) & (xy <= size - 0.5), axis=1)]


def score_movie(frames, truth, locate, spot_sigma_px: float | None = None) -> dict:
  """Counts of one movie: detections before and after its score split, false ones, QDs
  found, QDs inside the field, whether the split was found and whether the movie was
  flattened (with ``spot_sigma_px``, the QDs' spot sd: ``track_movie``'s background step
  first)."""
  from qdjax.localize import locator

  frames = np.asarray(frames, np.float32)
  detections, _ = tracking.detect(frames, locate)
  fallback = locator.default_min_score(locate)
  flattened = False
  if spot_sigma_px is not None:
    detections, still = tracking.without_background(
      frames, detections, locate, spot_sigma_px=spot_sigma_px
    )
    flattened = still.applied
  cut, source = tracking.choose_min_score(detections["score"], fallback=fallback)
  kept = detections if cut is None else detections[detections["score"] >= cut]
  size = frames.shape[-1]
  false = found = qds = 0
  for t, qd in enumerate(truth):
    xy = kept.loc[kept["frame"] == t, ["x", "y"]].to_numpy()
    inside = _inside(qd, size)
    qds += len(inside)
    if len(qd) == 0:
      false += len(xy)
      continue
    dist = np.linalg.norm(xy[:, None, :] - qd[None, :, :], axis=-1)
    false += int(np.sum(dist.min(1) > RADIUS_PX)) if len(xy) else 0
    if len(inside) and len(xy):
      d_in = np.linalg.norm(inside[:, None, :] - xy[None, :, :], axis=-1)
      found += int(np.sum(d_in.min(1) <= RADIUS_PX))
  return {
    "raw": len(detections),
    "kept": len(kept),
    "false": false,
    "found": found,
    "qds": qds,
    "split": source == "score split",
    "flattened": flattened,
  }


def _summary(per_movie: list[dict], frames: int) -> dict:
  total = {k: sum(m[k] for m in per_movie) for k in ("raw", "kept", "false", "found", "qds")}
  n = len(per_movie) * frames
  return {
    "detections_per_frame_raw": total["raw"] / n,
    "detections_per_frame": total["kept"] / n,
    "false_share": total["false"] / max(total["kept"], 1),
    "recall": total["found"] / max(total["qds"], 1),
    "qds_per_frame": total["qds"] / n,
    "split_found": f"{sum(m['split'] for m in per_movie)}/{len(per_movie)}",
    "flattened": f"{sum(m['flattened'] for m in per_movie)}/{len(per_movie)}",
  }


def run(
  repeats: int = 1, quick: bool = False, models: tuple[str, ...] | None = None, workdir=None
) -> dict:
  """The benchmark (--quick: 1 movie of 8 frames of each simulator's moving texture, the
  default model only)."""
  del repeats  # accuracy: one pass
  from qdjax.detect import inference
  from qdjax.localize import locator

  movies, frames = (1, 8) if quick else (3, 20)
  everything = (inference.default_model(),) if quick else inference.shipped_models()
  names = tuple(models) if models else everything
  locators = {name: locator.make("model", model=name) for name in names}
  if workdir is not None:
    locators["workdir"] = locator.make("model", workdir=workdir)
  start = time.perf_counter()
  cells = {}
  backgrounds = INVIVO + INDEPENDENT
  if quick:  # the code path of each simulator once: each in vivo background is a program
    backgrounds = (INVIVO[-1], INDEPENDENT[-1])
  for i, background in enumerate(backgrounds):
    make = invivo_movies if background in INVIVO else independent_movies
    data = make(background, movies, frames, seed=100 * (i + 1))
    spot = spot_px(background)
    cells[background] = {}
    for name, locate in locators.items():
      cells[background][name] = _summary(
        [score_movie(f, truth, locate) for f, truth in data], frames
      )
      cells[background][f"{name}+background"] = _summary(
        [score_movie(f, truth, locate, spot) for f, truth in data], frames
      )
  return {
    "what": "texture",
    "field_px": [SIZE, SIZE],
    "qds": QDS,
    "diffusion_um2_s": D,
    "movies_per_background": movies,
    "frames_per_movie": frames,
    "match_radius_px": RADIUS_PX,
    "workdir": None if workdir is None else str(workdir),
    "cells": cells,
    "target": "false_share < 0.05 on invivo_texture",
    "seconds": time.perf_counter() - start,
  }
