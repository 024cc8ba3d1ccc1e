"""Per-track D accuracy of whole pipelines on simulated movies (``bench.py --what=diffusion``).

Movies: 64 x 64 px fields at the in vivo photon levels of the ``invivo`` preset (docs/spec.md,
section 9), 12 QDs per field on average, 50 frames back to back, D = 0.1 to 2 um^2/s (one
D per movie). QDs start uniformly over the field widened by 3 sds of a movie's
displacement (their number scaled to match), so the field sees a stationary, uniform
density all movie long. Detector output is converted back to photons with the preset's
PMT gain and offset, as a user would with ``calibrate_pmt.py``'s result.

Pipelines (each: localiser -> ``trackpy.link`` -> estimator):
  * qdjax: what a user gets: ``tracking.track_movie`` with every default on each movie (the
    shipped model at its default settings, the threshold from the movie's score split, the
    link range fitted to its steps, tracks of >= 10 detections, common motion subtracted
    where significant, CVE or MLE); nothing is chosen by looking at any ground truth;
  * qdjax_tuned (an oracle): the shipped model (``max_detections`` raised to twice the
    field's QD count) with its threshold at the best F1 on validation movies' ground truth
    and the link range from the largest D of the bench, + CVE;
  * trackpy (tuned on truth, as below): ``trackpy.locate`` + naive MSD fit via
    ``trackpy.imsd`` (the ecosystem's way);
  * trackpy_cve (tuned on truth): ``trackpy.locate`` + CVE;
  * truth_cve: the ground-truth trajectory centroids + CVE with the centroid's R, the
    estimator alone on the same windows (no localiser, no linking);
  * truth_linked: the ground-truth centroids of every QD in the frame, without their
    identities, through the same linker and purity rule + CVE: what linking and its
    selection do alone.
Settings of the tuned localisers are chosen on separate validation movies, with their
ground truth (trackpy: diameter, percentile, minmass by AUC, as ``baselines.trackpy.tune``;
then the score threshold at the best F1), never on the movies measured; no user has that
truth, so those rows show what tuning could buy, not what a user gets.

Two traps are designed around. (1) Blur lowers and localisation error raises the naive
MSD; they can cancel at one D, so every D of the range is shown. (2) Tracks that stay
long in a small field belong to slow QDs. Each ratio is taken against its own movie's D,
QDs stay in focus (``sigma_z_um`` = 1e3 um) so that only the field's edge ends a track,
and what is measured is not whole tracks but windows: every track is cut at frames
0 and WINDOW, a window counts if the track covers it and stays INSET_PX inside the field,
and it is weighted by the inverse of the chance that its path fits in the field
(``tracking.field_windows``, docs/diffusion.md). The plain mean beside the weighted one shows
what the selection alone does.

Per pipeline and D, over the windows: the weighted median and IQR of D_est/D, the
weighted mean and its standard error, the plain mean, the relative RMSE, and RMSE / bound,
the Cramer-Rao bound of a WINDOW-frame track at the pipeline's own localisation error
(median CVE sigma over its windows) and blur (``diffusion.cramer_rao_diffusion``); 1 is an
efficient unbiased estimator. A window counts for a QD when >= 80% of its detections lie
within 4 px of that QD's centroid; impure windows (identities swapped by the linker, or
false detections) are counted, not measured.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from qdjax.evaluation import metrics
from qdjax.sim import movie, presets
from qdjax.tracks import diffusion, tracking

DIFFUSIONS = (0.1, 0.2, 0.5, 1.0, 2.0)
SIZE = 64
QDS = 12
FRAMES = 50
WINDOW = 25  # frames per measured window: the movie cut at frames 0 and 25
INSET_PX = 2.0  # windows must stay this far inside the field's edge
REACH_SD = 3.0  # QDs start up to this many movie-long displacement sds beyond the field
MATCH_PX = 4.0  # QDs are ~18 px apart; a snapshot differs from the centroid by ~1.6 px at D=2
PURITY = 0.8
SECONDS: dict[str, float] = {}  # localisation time per localiser, this process


def _preset():
  try:
    return presets.get("invivo")
  except ValueError:
    return None


def frame_params(d: float, qds: int = QDS, photon_scale: float = 1.0):
  """The benchmark's frame Params at D (invivo preset, or its section-9 values on ``paper``),
  with the QDs' peak photons times ``photon_scale`` (background unchanged)."""
  preset = _preset()
  extra = dict(height=SIZE, width=SIZE, num_particles=qds, sigma_z_um=1e3, margin_px=0.0)
  if preset is None:
    base = presets.get("paper")
    extra.update(pixel_size_um=0.2, peak_photons=19.9, background_photons=0.9)
  else:
    base = preset
    extra["peak_photons"] = float(base.values["peak_photons"])
  extra["peak_photons"] *= photon_scale
  return base.sim_params(diffusion=d, **extra)


def to_photons(values, params):
  """PMT output -> photons (mean-preserving), identity for a photon-counting detector."""
  if params.detector != "pmt":
    return values
  return (values - float(params.pmt_offset)) * float(params.pmt_alpha) / 3.0


def outside_px(d: float, dt: float) -> float:
  """How far beyond the field QDs start: REACH_SD sds of a coordinate's displacement over
  the movie, so that the density seen in the field stays flat all movie long."""
  frame = frame_params(d)
  return REACH_SD * math.sqrt(2 * d * FRAMES * dt) / float(frame.pixel_size_um)


def simulate(d: float, num_movies: int, seed: int, photon_scale: float = 1.0):
  """(frames [M, T, h, w] photons, centroids [M, T, P, 2], present [M, T, P], params).

  QDs start uniformly over the field widened by ``outside_px`` on every side, their number
  scaled with that area so that the field holds QDS on average: a stationary, uniform
  density, which the edge correction of the windows assumes (as in tissue, where the field
  is a small part of the volume the QDs fill)."""
  frame = frame_params(d)
  dt = movie.default_frame_interval(frame)
  outside = outside_px(d, dt)
  qds = round(QDS * ((SIZE - 1 + 2 * outside) / SIZE) ** 2)
  frame = frame_params(d, qds, photon_scale)
  params = movie.make_params(frame, FRAMES, outside_px=outside)
  out = jax.device_get(movie.simulate_movies(jax.random.key(seed), params, num_movies))
  return to_photons(np.asarray(out.counts), frame), out.centroids, out.present, params


def _threshold(locator, frames, keypoints, present) -> float:
  dets = metrics.Detections.from_list(locator(frames))
  return metrics.best_f1(metrics.match(dets, keypoints, present, MATCH_PX)).threshold


class _Thresholded:
  """A localiser keeping detections scored >= threshold (a ``qdjax.localize.locator.Locator``)."""

  def __init__(self, locator, threshold: float):
    self.locator, self.threshold = locator, float(threshold)

  def __call__(self, images, progress=None):
    return [d[d[:, 2] >= self.threshold] for d in self.locator(images, progress)]


def make_locators(validation, quick: bool):
  """Localisers with settings chosen on the validation movies: trackpy's diameter by AUC
  (``baselines.trackpy.tune``), then for every localiser the score threshold at the best F1
  (a tracker wants few false detections, which the AUC hardly penalises)."""
  from qdjax.detect import inference
  from qdjax.localize import trackpy as tp_baseline

  frames = np.concatenate([v[0].reshape(-1, SIZE, SIZE) for v in validation])
  most = max(v[1].shape[2] for v in validation)  # QDs simulated per movie differ with D

  def pad(a, value):
    a = a.reshape((-1,) + a.shape[2:])
    return np.pad(
      a, [(0, 0), (0, most - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=value
    )

  keypoints = np.concatenate(
    [pad(np.where(v[2][..., None], v[1], np.nan), np.nan) for v in validation]
  )
  present = np.concatenate([pad(v[2], False) for v in validation])
  grid = tp_baseline.Grid(
    diameters=(3, 5) if quick else (3, 5, 7), percentiles=(64.0,), minmasses=(0.0,)
  )
  dataset = {"images": frames, "keypoints": keypoints, "present": present}
  tuning = tp_baseline.tune([dataset], [MATCH_PX], grid)
  raw = {"trackpy": tp_baseline.Locator(tuning.settings)}
  notes = {"trackpy_settings": tuning.settings.to_dict()}
  try:
    raw["model"] = inference.load(max_detections=2 * QDS)
  except FileNotFoundError as e:
    notes["model"] = f"not run: {e}"
  else:
    notes["model"] = f"shipped '{inference.default_model()}' model"
  locators = {}
  for name, locator in raw.items():
    threshold = _threshold(locator, frames, keypoints, present)
    notes[f"{name}_min_score"] = threshold
    locators[name] = _Thresholded(locator, threshold)
  if "model" in raw:  # the shipped model as locate.py and track.py load it: no truth used
    locators["defaults"] = inference.load()
  return locators, notes


def identify(tracks: pd.DataFrame, centroids, present=None, match_px: float = MATCH_PX):
  """{particle: QD index or -1}: the QD within ``match_px`` of >= PURITY of its detections.

  Every QD counts, also one whose centroid lies just outside the frame: its spot still
  shows at the edge, and a localiser that finds it is right (the windows measured keep
  INSET_PX inside the field anyway). With ``present`` ([T, P]), only QDs present in a
  frame count there."""
  out = {}
  for particle, one in tracks.groupby("particle"):
    f = one["frame"].to_numpy()
    xy = one[["x", "y"]].to_numpy()
    dist = np.linalg.norm(centroids[f] - xy[:, None], axis=-1)
    if present is not None:
      dist = np.where(present[f], dist, np.inf)
    nearest = np.argmin(dist, axis=1)
    hit = dist[np.arange(len(f)), nearest] <= match_px
    votes = np.bincount(nearest[hit], minlength=centroids.shape[1])
    qd = int(np.argmax(votes))
    out[particle] = qd if votes[qd] >= PURITY * len(f) else -1
  return out


def truth_tracks(centroids, present) -> pd.DataFrame:
  """The ground-truth centroids as tracks: one per run of frames a QD is present."""
  f, q = np.nonzero(present)
  order = np.lexsort((f, q))
  f, q = f[order], q[order]
  new = np.concatenate([[True], (q[1:] != q[:-1]) | (f[1:] != f[:-1] + 1)])
  xy = centroids[f, q]
  return pd.DataFrame({"frame": f, "x": xy[:, 0], "y": xy[:, 1], "particle": np.cumsum(new)})


def _window_tuples(windows, table, centroids):
  """[(D, naive D, sigma^2, weight, pure)] of estimated windows; ``pure``: with
  ``centroids`` ([T, P, 2], the truth), whether the window follows one QD (``identify``),
  else True."""
  identity = identify(windows, centroids) if centroids is not None else {}
  weight = windows.groupby("particle")["weight"].first()
  sigma2 = (table["sigma_x_um"] ** 2 + table["sigma_y_um"] ** 2) / 2
  return [
    (
      row.D_um2_s,
      row.D_msd_um2_s,
      s2,
      float(weight[row.particle]),
      identity.get(row.particle, 0) >= 0,
    )
    for row, s2 in zip(table.itertuples(), sigma2, strict=True)
  ]


def measure_windows(tracks, analysis, centroids=None):
  """``_window_tuples`` of the edge-weighted windows of these tracks (every window, gaps
  allowed: ``analysis.min_frames`` should be small)."""
  windows = tracking.field_windows(tracks, WINDOW, SIZE, SIZE, INSET_PX)
  if len(windows) == 0:
    return []
  return _window_tuples(windows, tracking.estimate(windows, analysis), centroids)


def measure_result(result, centroids):
  """``_window_tuples`` of the windows of a ``tracking.track_movie`` result (its tracks with
  the common motion removed, its own Analysis and estimator)."""
  if len(result.windows) == 0:
    return []
  analysis = dataclasses.replace(result.analysis, min_frames=3)
  return _window_tuples(result.windows, tracking.estimate(result.windows, analysis), centroids)


def run_pipelines(frames, centroids, present, params, locators, reach):
  """Per pipeline: [(D_est, sigma^2 est, weight, pure)] of the edge-weighted windows over
  these movies, and counts of tracks and windows."""
  frame = params.frame
  dt = float(params.frame_interval_s)
  a = float(frame.pixel_size_um)
  analysis = tracking.Analysis(
    frame_interval_s=dt,
    pixel_size_um=a,
    blur=diffusion.localiser_blur(frame, dt),
    min_frames=3,
    estimator="cve",
  )
  truth = dataclasses.replace(
    analysis, blur=diffusion.raster_blur_coefficient(frame, dt, "centroid")
  )
  results: dict[str, list] = {}
  counts: dict[str, dict] = {}
  for name, locator in locators.items():
    if name == "defaults":
      continue
    for m in range(len(frames)):
      tick = time.perf_counter()
      detections, _ = tracking.detect(frames[m], locator, chunk=FRAMES)
      SECONDS[name] = SECONDS.get(name, 0.0) + time.perf_counter() - tick
      linked = tracking.link(detections, reach, memory=3)
      found = measure_windows(linked, analysis, centroids[m])
      c = counts.setdefault(name, {"tracks": 0, "windows": 0, "impure_windows": 0})
      c["tracks"] += int(linked["particle"].nunique()) if len(linked) else 0
      c["windows"] += len(found)
      c["impure_windows"] += sum(not pure for *_, pure in found)
      for d_cve, d_msd, sigma2, weight, pure in found:
        if name == "trackpy":
          results.setdefault("trackpy", []).append((d_msd, sigma2, weight, pure))
          results.setdefault("trackpy_cve", []).append((d_cve, sigma2, weight, pure))
        else:
          results.setdefault("qdjax_tuned" if name == "model" else name, []).append(
            (d_cve, sigma2, weight, pure)
          )
  # What a user gets: track_movie with every default, per movie.
  if "defaults" in locators:
    preset = _preset() or presets.get("paper")
    for m in range(len(frames)):
      tick = time.perf_counter()
      result = tracking.track_movie(
        frames[m], locators["defaults"], preset, frame_interval_s=dt, window=WINDOW
      )
      SECONDS["defaults"] = SECONDS.get("defaults", 0.0) + time.perf_counter() - tick
      found = measure_result(result, centroids[m])
      c = counts.setdefault("qdjax", {"tracks": 0, "windows": 0, "impure_windows": 0})
      c["tracks"] += result.summary["tracks"]
      c["windows"] += len(found)
      c["impure_windows"] += sum(not pure for *_, pure in found)
      for d_est, _, sigma2, weight, pure in found:
        results.setdefault("qdjax", []).append((d_est, sigma2, weight, pure))
  # The estimator alone, on the same kind of window of the ground-truth centroids.
  for m in range(len(frames)):
    for d_cve, _, sigma2, weight, _ in measure_windows(
      truth_tracks(centroids[m], present[m]), truth
    ):
      results.setdefault("truth_cve", []).append((d_cve, sigma2, weight, True))
    # Linking and its selection alone: the true centroids of every QD in the frame, as
    # detections without identities, through the same linker and purity rule.
    f, q = np.nonzero(present[m])
    xy = centroids[m][f, q]
    detections = pd.DataFrame({"frame": f, "x": xy[:, 0], "y": xy[:, 1], "score": 1.0})
    linked = tracking.link(detections, reach, memory=3)
    found = measure_windows(linked, truth, centroids[m])
    c = counts.setdefault("truth_linked", {"tracks": 0, "windows": 0, "impure_windows": 0})
    c["tracks"] += int(linked["particle"].nunique()) if len(linked) else 0
    c["windows"] += len(found)
    c["impure_windows"] += sum(not pure for *_, pure in found)
    for d_cve, _, sigma2, weight, pure in found:
      results.setdefault("truth_linked", []).append((d_cve, sigma2, weight, pure))
  analyses = {"truth_cve": truth, "truth_linked": truth}
  return results, counts, {name: analyses.get(name, analysis) for name in results}


def _weighted_quantiles(values, weights, qs):
  order = np.argsort(values)
  cum = np.cumsum(weights[order])
  return np.interp(np.asarray(qs) * cum[-1], cum - weights[order] / 2, values[order])


def summarise(estimates, d: float, analysis) -> dict:
  """Edge-weighted ratio statistics of the windows, and their error relative to the
  Cramer-Rao bound of a WINDOW-frame track (the plain, unweighted mean beside them shows
  what the field's selection alone would do)."""
  everything = [e for e in estimates if np.isfinite(e[0]) and e[2] > 0]
  estimates = [e for e in everything if e[3]]
  if not estimates:
    return {"windows": 0}
  if len(everything) > len(estimates):  # what a user gets: every window, swaps included
    impure = summarise([e[:3] + (True,) for e in everything], d, analysis)
    extra = {"all_windows": {k: impure[k] for k in ("windows", "mean_ratio", "mean_ratio_se")}}
    extra["all_windows"]["rmse_over_bound"] = impure["rmse_over_bound"]
  else:
    extra = {}
  ratio = np.array([e[0] for e in estimates], np.float64) / d
  weight = np.array([e[2] for e in estimates], np.float64)
  q25, q50, q75 = _weighted_quantiles(ratio, weight, [0.25, 0.5, 0.75])
  mean, se = diffusion.weighted_mean(ratio, weight)
  sigma2 = float(np.median([max(e[1], 0.0) for e in estimates]))
  bound = (
    diffusion.cramer_rao_diffusion(WINDOW, d, sigma2, analysis.mean_blur, analysis.frame_interval_s)
    / d
  )
  rmse = float(np.sqrt(np.sum(weight * (ratio - 1) ** 2) / weight.sum()))
  return {
    "windows": len(ratio),
    "median_ratio": float(q50),
    "iqr_ratio": [float(q25), float(q75)],
    "mean_ratio": mean,
    "mean_ratio_se": se,
    "plain_mean_ratio": float(ratio.mean()),
    "relative_rmse": rmse,
    "relative_bound": bound,
    # 1 for an efficient unbiased estimator.
    "rmse_over_bound": rmse / bound,
    "sigma_um": math.sqrt(sigma2),
    **extra,
  }


def judge(rows: dict) -> dict:
  """The three targets for the qdjax pipeline (its defaults), from the per-pipeline, per-D
  rows; a D counts only where both pipelines measured windows."""
  q, tp = rows.get("qdjax", {}), rows.get("trackpy", {})
  measured = [k for k, r in q.items() if r.get("windows")]
  both = [k for k in measured if tp.get(k, {}).get("windows")]
  if not measured:
    return {}
  return {
    "qdjax_mean_ratio_in_0.95_1.05_at_every_D": all(
      0.95 <= q[k]["mean_ratio"] <= 1.05 for k in measured
    ),
    "qdjax_rmse_within_1.2x_bound_at_every_D": all(
      q[k]["rmse_over_bound"] <= 1.2 for k in measured
    ),
    "qdjax_rmse_below_trackpy_at_every_D": bool(both)
    and all(q[k]["relative_rmse"] < tp[k]["relative_rmse"] for k in both),
    "qdjax_rmse_over_trackpy_rmse": {
      k: q[k]["relative_rmse"] / tp[k]["relative_rmse"] for k in both
    },
  }


def run(repeats: int = 1, quick: bool = False, photon_scale: float = 1.0) -> dict:
  """The benchmark (--quick: 3 movies at D = 0.1 and 2); ``photon_scale`` dims (< 1) or
  brightens the QDs, validation movies included."""
  if not (math.isfinite(photon_scale) and photon_scale > 0):
    raise ValueError(f"photon_scale must be a positive number, got {photon_scale}")
  del repeats  # accuracy, not timing: one pass
  start = time.perf_counter()
  num_movies = 3 if quick else 24
  diffusions = (0.1, 2.0) if quick else DIFFUSIONS
  validation = [
    simulate(d, 1 if quick else 2, 1000 + i, photon_scale) for i, d in enumerate(DIFFUSIONS)
  ]
  locators, notes = make_locators(validation, quick)
  params = validation[0][3]
  dt = float(params.frame_interval_s)
  reach = tracking.search_range_px(max(DIFFUSIONS), dt, float(params.frame.pixel_size_um))
  rows: dict[str, dict] = {}
  counts_all: dict[str, dict] = {}
  for i, d in enumerate(tqdm(diffusions, desc="diffusion bench", unit="D")):
    frames, centroids, present, params = simulate(d, num_movies, 2000 + i, photon_scale)
    results, counts, analyses = run_pipelines(frames, centroids, present, params, locators, reach)
    for name, estimates in results.items():
      rows.setdefault(name, {})[str(d)] = summarise(estimates, d, analyses[name])
    counts_all[str(d)] = dict(counts, qds_simulated=int(centroids.shape[2]))
  pooled = {
    name: float(np.mean([r["mean_ratio"] for r in by_d.values() if r.get("windows")]))
    for name, by_d in rows.items()
  }
  targets = judge(rows)
  return {
    "what": "diffusion",
    "preset": "invivo" if _preset() is not None else "paper+spec section 9 photon levels",
    "peak_photons": float(params.frame.peak_photons),
    "background_photons": float(params.frame.background_photons),
    "field_px": [SIZE, SIZE],
    "qds_per_field": QDS,
    "frames": FRAMES,
    "window_frames": WINDOW,
    "inset_px": INSET_PX,
    "outside_px": {str(d): outside_px(d, dt) for d in diffusions},
    "movies_per_D": num_movies,
    "frame_interval_s": dt,
    "blur_local": diffusion.raster_blur_coefficient(params.frame, dt, "local"),
    "blur_local_y": diffusion.raster_blur_coefficient(params.frame, dt, "local_y"),
    "blur_centroid": diffusion.raster_blur_coefficient(params.frame, dt, "centroid"),
    "search_range_px": reach,
    "settings": notes,
    "counts": counts_all,
    "rows": rows,
    "mean_ratio_over_D": pooled,
    "targets": targets,
    "seconds": time.perf_counter() - start,
    "locate_seconds": dict(SECONDS),
  }
