"""D with and without the tissue-motion correction (``bench.py --what=motion``).

Movies of the ``invivo`` preset's microscope, 96 x 96 px (19.2 um), 100 frames, 8 QDs in
the field on average (QDs start beyond it too, so its density stays flat), QDs in focus
(only the field's edge ends a track), on the preset's textured background (log-normal,
relative sd 0.5, correlation length 0.4 um) moving with the tissue: breathing at 1.5 Hz of
amplitude A along (0, 1, 0.5) (y and z), the preset's heartbeat (8 Hz, 0.25 um in y and z)
and drift. A runs over AMPLITUDES, D over DIFFUSIONS, one D per movie. Detector output is
converted back to photons with the preset's PMT gain and offset, as a user would with
``calibrate_pmt.py``'s result.

Rows, per movie (one localisation feeds all rows of a localiser):
  * qdjax: what a user gets: ``track_movie``'s defaults (the shipped model, the movie's
    score split and link range, the tissue's motion read from the background and corrected
    where the frame's halves agree, the movie localised again less its static background
    where that has structure, common motion, CVE or MLE);
  * uncorrected: the same without the tissue correction (``tissue=False``);
  * not_flattened: the same without the background step (``background=False``): the
    movie's own frames localised;
  * truth_corrected, truth_uncorrected (oracles: no localiser): the true centroids, where
    a localiser would see them (the tissue-frame centroid moved by the tissue's
    displacement at the middle of the QD's line), through the same pipeline with and
    without the correction: what the correction does alone;
  * truth_true_motion (an oracle): the true centroids in the tissue's frame: the floor;
  * unwarped (at D = 0.2 only): the other place to correct, before localisation: each
    frame resampled onto the tissue's grid with the motion read from it
    (``registration.unwarp``), then localised and tracked without the correction.
The measured D of a movie is the edge-corrected ensemble D over its tracks' windows
(``tracking.field_ensemble``, docs/diffusion.md, section 5); the displacement-weighted
ensemble over tracks is beside it. Per row and cell: the mean of D_est / D over the movies
and its standard error, the relative RMSE, and that RMSE over the Cramer-Rao bound of the
movie's pooled displacements (one track as long as all its tracks together: a floor no
estimator reaches, so read it as a scale). The estimated motion trace, as read and as scaled by
the tracks' steps (``tracking.tissue_gain``, its gain per axis), is compared with the true
one (the true displacement at each strip's time, both less their medians).
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from qdjax.sim import movie, presets
from qdjax.tracks import diffusion, registration, tracking

AMPLITUDES = (0.0, 0.5, 1.0, 2.0, 3.0)  # breathing amplitude, um (half peak-to-peak)
DIFFUSIONS = (0.05, 0.2, 1.0)
DIRECTION = (0.0, 1.0, 0.5)  # breathing along y and z, as the invivo preset's
SIZE, FRAMES, QDS = 96, 100, 8
REACH_SD = 3.0  # QDs start up to this many movie-long displacement sds beyond the field
MAX_OUTSIDE_PX = 60.0
ROWS = (
  "qdjax",
  "uncorrected",
  "not_flattened",
  "truth_corrected",
  "truth_uncorrected",
  "truth_true_motion",
)
UNWARP_AT = 0.2  # D of the movies also corrected before localisation


def movie_params(d: float, amplitude: float, size: int, frames: int, qds: int, direction=DIRECTION):
  """The bench's MovieParams at D and breathing amplitude (along ``direction``)."""
  preset = presets.get("invivo")
  frame = preset.sim_params(
    diffusion=d, height=size, width=size, num_particles=qds, sigma_z_um=1e3, margin_px=0.0
  )
  dt = movie.default_frame_interval(frame)
  outside = min(
    MAX_OUTSIDE_PX,
    REACH_SD * math.sqrt(2 * d * frames * dt) / float(frame.pixel_size_um),
  )
  count = round(qds * ((size - 1 + 2 * outside) / size) ** 2)
  frame = preset.sim_params(
    diffusion=d, height=size, width=size, num_particles=count, sigma_z_um=1e3, margin_px=0.0
  )
  tissue = preset.tissue_params(
    on=True, breathing_um=tuple(float(amplitude * c) for c in direction)
  )
  return movie.make_params(frame, frames, outside_px=outside, tissue=tissue), preset


def _photons(counts, frame):
  if frame.detector != "pmt":
    return counts
  return (counts - float(frame.pmt_offset)) * float(frame.pmt_alpha) / 3.0


def _seen_at_line(tissue_centroids, tissue_um, pixel_um: float):
  """[T, P, 2] px: each QD where the scan saw it, its tissue-frame centroid moved by the
  tissue's displacement at the middle of the line it lies on. (The movie's ``centroids``
  average the displacement over the whole frame, which is not where a localiser sees a QD
  that the tissue moved while the frame was scanned.)"""
  h = tissue_um.shape[1]
  line = np.clip(np.round(tissue_centroids[..., 1]), 0, h - 1).astype(int)
  shift = np.take_along_axis(tissue_um[..., :2], line[..., None], axis=1) / pixel_um
  seen = tissue_centroids + shift
  line = np.clip(np.round(seen[..., 1]), 0, h - 1).astype(int)  # the line it was seen on
  shift = np.take_along_axis(tissue_um[..., :2], line[..., None], axis=1) / pixel_um
  return tissue_centroids + shift


def _truth_detections(centroids, present) -> pd.DataFrame:
  f, q = np.nonzero(present)
  xy = centroids[f, q]
  return pd.DataFrame({"frame": f, "x": xy[:, 0], "y": xy[:, 1], "score": 1.0})


def _measure(result, d: float) -> dict:
  s = result.summary
  analysis = result.analysis
  tracks = result.diffusion
  sigma2 = float(np.nanmedian((tracks["sigma_x_um"] ** 2 + tracks["sigma_y_um"] ** 2) / 2))
  steps = int(len(result.tracks))
  bound = (
    diffusion.cramer_rao_diffusion(
      max(steps, 3), d, max(sigma2, 0.0), analysis.mean_blur, analysis.frame_interval_s
    )
    / d
    if steps >= 3 and math.isfinite(sigma2)
    else math.nan
  )
  return {
    "edge_ratio": s["field_ensemble"]["D_um2_s"] / d,
    "ensemble_ratio": s["ensemble"]["D_um2_s"] / d,
    "tracks": s["tracks"],
    "detections_kept": s["detections_kept"],
    "relative_bound": bound,
    "tissue_applied": None if s.get("tissue") is None else s["tissue"]["applied"],
  }


def _trace_error(found, tissue_um, tissue_time, pixel_um) -> dict:
  """RMS (x, y) px of the estimated trace against the true displacement at the strips'
  times, both less their medians."""
  true = (
    np.stack(
      [np.interp(found.time_s, tissue_time.ravel(), tissue_um[..., a].ravel()) for a in (0, 1)],
      -1,
    )
    / pixel_um
  )
  error = (found.shift_px - np.median(found.shift_px, 0)) - (true - np.median(true, 0))
  return {
    "trace_rms_error_px": [float(v) for v in np.sqrt(np.mean(error**2, 0))],
    "true_rms_px": [float(v) for v in true.std(0)],
  }


def _cell(per_movie: list[dict]) -> dict:
  ratio = np.array([m["edge_ratio"] for m in per_movie], np.float64)
  ratio = ratio[np.isfinite(ratio)]
  if len(ratio) == 0:
    return {"movies": 0}
  bound = np.array([m["relative_bound"] for m in per_movie], np.float64)
  rmse = float(np.sqrt(np.mean((ratio - 1) ** 2)))
  out = {
    "movies": len(ratio),
    "mean_ratio": float(ratio.mean()),
    "mean_ratio_se": float(ratio.std(ddof=1) / math.sqrt(len(ratio))) if len(ratio) > 1 else None,
    "ensemble_mean_ratio": float(np.nanmean([m["ensemble_ratio"] for m in per_movie])),
    "relative_rmse": rmse,
    "rmse_over_pooled_bound": rmse / float(np.sqrt(np.nanmean(bound**2))),
    "tracks_per_movie": float(np.mean([m["tracks"] for m in per_movie])),
  }
  applied = [m["tissue_applied"] for m in per_movie if m["tissue_applied"] is not None]
  if applied:
    out["corrected_movies"] = int(sum(applied))
  return out


def run(
  repeats: int = 1,
  quick: bool = False,
  model: str | None = None,
  workdir=None,
  breathing_z: float = DIRECTION[2],
) -> dict:
  """The benchmark (--quick: 1 movie of 64 x 64 px, 40 frames, at A = 0 and 2 um, D = 0.2);
  ``breathing_z``: the breathing's z amplitude over its y amplitude."""
  del repeats  # accuracy: one pass
  direction = (DIRECTION[0], DIRECTION[1], float(breathing_z))
  from qdjax.localize import locator

  amplitudes = (0.0, 2.0) if quick else AMPLITUDES
  diffusions = (0.2,) if quick else DIFFUSIONS
  movies = 1 if quick else 3
  size, frames, qds = (64, 40, 6) if quick else (SIZE, FRAMES, QDS)
  locate = None
  start = time.perf_counter()
  cells, traces, example = {}, {}, None
  grid = [(a, d) for d in diffusions for a in amplitudes]
  for i, (amplitude, d) in enumerate(tqdm(grid, desc="motion", unit="cell")):
    params, preset = movie_params(d, amplitude, size, frames, qds, direction)
    if locate is None:
      locate = locator.make("model", model=model, workdir=workdir, preset=preset)
    out = jax.device_get(movie.simulate_movies(jax.random.key(1000 + i), params, movies))
    counts = _photons(np.asarray(out.counts), params.frame)
    times = movie.tissue_times(params)
    pixel = float(params.frame.pixel_size_um)
    analysis = tracking.analysis_for(preset, size, size)
    timing = registration.timing_for(preset, size, size)
    per_row = {name: [] for name in ROWS + (("unwarped",) if d == UNWARP_AT else ())}
    errors, flattened_movies = [], []
    for m in range(movies):
      frames_m = counts[m]
      present = np.asarray(out.present[m])
      raw, _ = tracking.detect(frames_m, locate)
      fallback = locator.default_min_score(locate)  # as track_movie
      spot_px = float(preset.values["sigma_xy_um"]) / pixel
      found = tracking.tissue_motion(
        frames_m, raw, timing, pixel_size_um=pixel, fallback_min_score=fallback,
        spot_sigma_px=spot_px,
      )  # fmt: skip
      detections, still = tracking.without_background(frames_m, raw, locate, spot_sigma_px=spot_px)
      flattened_movies.append(still.applied)
      shared = dict(motion_types=False, fallback_min_score=fallback)
      t = frames_m.shape[0]
      user = tracking.track_detections(
        detections, t, size, size, analysis, tissue=found, background=still, **shared
      )
      per_row["qdjax"].append(_measure(user, d))
      per_row["uncorrected"].append(
        _measure(tracking.track_detections(detections, t, size, size, analysis, **shared), d)
      )
      per_row["not_flattened"].append(
        _measure(tracking.track_detections(raw, t, size, size, analysis, tissue=found, **shared), d)
      )
      truth = _truth_detections(
        _seen_at_line(np.asarray(out.tissue_centroids[m]), np.asarray(out.tissue_um[m]), pixel),
        present,
      )
      known = tracking.tissue_motion(
        frames_m, truth, timing, pixel_size_um=pixel, min_score=0.0,
        spot_sigma_px=float(preset.values["sigma_xy_um"]) / pixel,
      )  # fmt: skip
      per_row["truth_corrected"].append(
        _measure(
          tracking.track_detections(truth, t, size, size, analysis, tissue=known, **shared), d
        )  # fmt: skip
      )
      per_row["truth_uncorrected"].append(
        _measure(tracking.track_detections(truth, t, size, size, analysis, **shared), d)
      )
      tissue_frame = _truth_detections(np.asarray(out.tissue_centroids[m]), present)
      per_row["truth_true_motion"].append(
        _measure(tracking.track_detections(tissue_frame, t, size, size, analysis, **shared), d)
      )
      if d == UNWARP_AT and found is not None:
        flat, _ = tracking.detect(registration.unwarp(frames_m, found), locate)
        per_row["unwarped"].append(
          _measure(tracking.track_detections(flat, t, size, size, analysis, **shared), d)
        )
      tissue_um = np.asarray(out.tissue_um[m])
      used = user.tissue if found is not None and found.applied else found  # the trace used
      if found is None:
        errors.append({})
      else:  # the trace as read, and as scaled by the tracks' steps where it was applied
        errors.append(_trace_error(found, tissue_um, times, pixel))
        errors[-1]["scaled_trace_rms_error_px"] = _trace_error(used, tissue_um, times, pixel)[
          "trace_rms_error_px"
        ]
        errors[-1]["gain"] = [float(v) for v in used.gain]
      if example is None and amplitude >= 1.0 and found is not None:
        keep = used.time_s <= 3.0
        true = np.stack(
          [np.interp(used.time_s[keep], times.ravel(), tissue_um[..., a].ravel()) for a in (0, 1)],
          -1,
        )
        example = {
          "amplitude_um": amplitude,
          "diffusion_um2_s": d,
          "frame": np.round(frames_m[1], 2).tolist(),
          "time_s": np.round(used.time_s[keep], 5).tolist(),
          "estimated_um": np.round(
            (used.shift_px[keep] - np.median(used.shift_px, 0)) * pixel, 4
          ).tolist(),
          "true_um": np.round(true - np.median(true, 0), 4).tolist(),
        }
    key = f"A={amplitude:g}um,D={d:g}"
    cells[key] = {name: _cell(rows) for name, rows in per_row.items()}
    cells[key]["qdjax"]["flattened_movies"] = int(sum(flattened_movies))
    traces[key] = {
      name: np.nanmean([e[name] for e in errors if e], axis=0).tolist() if any(errors) else None
      for name in ("trace_rms_error_px", "scaled_trace_rms_error_px", "true_rms_px", "gain")
    }
  return {
    "what": "motion",
    "preset": "invivo",
    "field_px": [size, size],
    "frames": frames,
    "qds_in_field": qds,
    "movies_per_cell": movies,
    "amplitudes_um": list(amplitudes),
    "diffusions_um2_s": list(diffusions),
    "breathing_direction": list(direction),
    "model": model or "default",
    "cells": cells,
    "traces": traces,
    "targets": judge(cells, amplitudes, diffusions),
    "example": example,
    "seconds": time.perf_counter() - start,
    "note": "qdjax and uncorrected are the defaults a user gets; truth_* rows are oracles",
  }


def judge(cells: dict, amplitudes, diffusions) -> dict:
  """The targets: corrected D within 0.9-1.1 at A <= 2 um; at A = 0 the corrected equal to
  the uncorrected within the standard error."""
  out = {}
  within = []
  for d in diffusions:
    for a in amplitudes:
      if a > 2.0:
        continue
      row = cells[f"A={a:g}um,D={d:g}"]["qdjax"]
      within.append(row.get("movies", 0) > 0 and 0.9 <= row["mean_ratio"] <= 1.1)
    still = cells.get(f"A=0um,D={d:g}")
    if still:
      c, u = still["qdjax"], still["uncorrected"]
      if c.get("movies") and u.get("movies"):
        se = max(c.get("mean_ratio_se") or 0.0, u.get("mean_ratio_se") or 0.0)
        out[f"no_loss_without_motion_D={d:g}"] = abs(c["mean_ratio"] - u["mean_ratio"]) <= se
  out["corrected_within_0.9_1.1_up_to_2um"] = bool(within) and all(within)
  return out
