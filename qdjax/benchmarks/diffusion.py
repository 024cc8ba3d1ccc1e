"""Per-track D accuracy of whole pipelines on simulated movies (``bench.py --what=diffusion``).

Movies: 64 x 64 px fields at the in vivo photon levels of the ``invivo`` preset (docs/spec.md,
section 9), 12 QDs per field, 50 frames back to back, D = 0.1 to 2 um^2/s (one D per
movie). Detector output is converted back to photons with the preset's PMT gain and
offset, as a user would with ``calibrate_pmt.py``'s result.

Pipelines (each: localiser -> ``trackpy.link`` -> estimator):
  * qdjax: the shipped model (``max_detections`` raised to the field's QD count) + CVE;
  * trackpy: ``trackpy.locate`` + naive MSD fit via ``trackpy.imsd`` (the ecosystem's way);
  * trackpy_cve: ``trackpy.locate`` + CVE;
  * truth_cve: the ground-truth trajectory centroids + CVE with the centroid's R, the
    estimator alone on the same kind of track (no localiser, no linking).
Settings of each localiser are chosen on separate validation movies (trackpy: diameter,
percentile, minmass by AUC, as ``baselines.trackpy.tune``; the model: its score threshold
at the best F1), never on the movies measured.

Two traps are designed around. (1) Blur lowers and localisation error raises the naive
MSD; they can cancel at one D, so every D of the range is shown. (2) Tracks that stay
long in a small field belong to slow QDs: each movie has one known D and every ratio is
taken against its own movie's D, never pooled over D; QDs stay in focus here
(``sigma_z_um`` = 1e3 um, a movie of in-plane motion) so that only the field's edge ends a
track, and ``truth_cve`` on the same selection shows what the selection itself does.

Per pipeline and D, over tracks spanning at least 20 of the 50 frames (at D >= 1 um^2/s
few QDs stay 50 frames in a 12.8 um field): the median and IQR of D_est/D, the mean and
its standard error, the relative RMSE, and the RMS of (D_est - D) / bound, with the
Cramer-Rao bound of a track of that length at the pipeline's own localisation error
(median CVE sigma over its tracks) and blur (``diffusion.cramer_rao_diffusion``); 1 is an
efficient unbiased estimator. A track counts for a QD when >= 80% of its detections lie
within 4 px of that QD's centroid; impure tracks are counted, not measured.
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from qdjax import diffusion, metrics, movie, presets, track

DIFFUSIONS = (0.1, 0.2, 0.5, 1.0, 2.0)
SIZE = 64
QDS = 12
FRAMES = 50
MIN_FRAMES = 20  # shortest track measured (at D >= 1 few QDs stay 50 frames in the field)
MATCH_PX = 4.0  # QDs are ~18 px apart; a snapshot differs from the centroid by ~1.6 px at D=2
PURITY = 0.8
SECONDS: dict[str, float] = {}  # localisation time per localiser, this process


def _preset():
  try:
    return presets.get("invivo")
  except ValueError:
    return None


def frame_params(d: float):
  """The benchmark's frame Params at D (invivo preset, or its section-9 values on ``paper``)."""
  preset = _preset()
  extra = dict(height=SIZE, width=SIZE, num_particles=QDS, sigma_z_um=1e3, margin_px=0.0)
  if preset is None:
    base = presets.get("paper")
    return base.sim_params(
      diffusion=d, pixel_size_um=0.2, peak_photons=19.9, background_photons=0.9, **extra
    )
  return preset.sim_params(diffusion=d, **extra)


def to_photons(values, params):
  """PMT output -> photons (mean-preserving), identity for a photon-counting detector."""
  if params.detector != "pmt":
    return values
  return (values - float(params.pmt_offset)) * float(params.pmt_alpha) / 3.0


def simulate(d: float, num_movies: int, seed: int):
  """(frames [M, T, h, w] photons, centroids [M, T, P, 2], present [M, T, P], params)."""
  frame = frame_params(d)
  params = movie.make_params(frame, FRAMES, outside_px=4.0)
  out = jax.device_get(movie.simulate_movies(jax.random.key(seed), params, num_movies))
  return to_photons(np.asarray(out.counts), frame), out.centroids, out.present, params


def _threshold(locator, frames, keypoints, present) -> float:
  dets = metrics.Detections.from_list(locator(frames))
  return metrics.best_f1(metrics.match(dets, keypoints, present, MATCH_PX)).threshold


class _Thresholded:
  """A localiser keeping detections scored >= threshold (a ``qdjax.locator.Locator``)."""

  def __init__(self, locator, threshold: float):
    self.locator, self.threshold = locator, float(threshold)

  def __call__(self, images, progress=None):
    return [d[d[:, 2] >= self.threshold] for d in self.locator(images, progress)]


def make_locators(validation, quick: bool):
  """Localisers with settings chosen on the validation movies: trackpy's diameter by AUC
  (``baselines.trackpy.tune``), then for every localiser the score threshold at the best F1
  (a tracker wants few false detections, which the AUC hardly penalises)."""
  from qdjax import inference
  from qdjax.baselines import trackpy as tp_baseline

  frames = np.concatenate([v[0].reshape(-1, SIZE, SIZE) for v in validation])
  keypoints = np.concatenate(
    [np.where(v[2][..., None], v[1], np.nan).reshape(-1, QDS, 2) for v in validation]
  )
  present = np.concatenate([v[2].reshape(-1, QDS) for v in validation])
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
    notes["model"] = "shipped, trained on the preset " + str(
      raw["model"].info.get("preset", {}).get("preset", "?")
    )
  locators = {}
  for name, locator in raw.items():
    threshold = _threshold(locator, frames, keypoints, present)
    notes[f"{name}_min_score"] = threshold
    locators[name] = _Thresholded(locator, threshold)
  return locators, notes


def _identify(tracks: pd.DataFrame, centroids, present):
  """{particle: QD index or -1}: the QD within MATCH_PX of >= PURITY of its detections."""
  out = {}
  for particle, one in tracks.groupby("particle"):
    f = one["frame"].to_numpy()
    xy = one[["x", "y"]].to_numpy()
    dist = np.linalg.norm(centroids[f] - xy[:, None], axis=-1)
    dist = np.where(present[f], dist, np.inf)
    nearest = np.argmin(dist, axis=1)
    hit = dist[np.arange(len(f)), nearest] <= MATCH_PX
    votes = np.bincount(nearest[hit], minlength=centroids.shape[1])
    qd = int(np.argmax(votes))
    out[particle] = qd if votes[qd] >= PURITY * len(f) else -1
  return out


def _pure_tracks(tracks, identity):
  """Particles whose track belongs to one QD."""
  return [p for p, qd in identity.items() if qd >= 0]


def _longest_run(mask):
  """(start, stop) of the longest run of True in a 1-D mask."""
  best, start = (0, 0), None
  for i, value in enumerate(list(mask) + [False]):
    if value and start is None:
      start = i
    elif not value and start is not None:
      if i - start > best[1] - best[0]:
        best = (start, i)
      start = None
  return best


def run_pipelines(frames, centroids, present, params, locators, reach):
  """Per pipeline: list of (D_est, sigma^2 est) of full, pure tracks over these movies."""
  frame = params.frame
  dt = float(params.frame_interval_s)
  analysis = track.Analysis(
    frame_interval_s=dt,
    pixel_size_um=float(frame.pixel_size_um),
    blur=diffusion.raster_blur_coefficient(frame, dt, "local"),
    min_frames=MIN_FRAMES,
  )
  results: dict[str, list] = {}
  counts: dict[str, dict] = {}
  for name, locator in locators.items():
    for m in range(len(frames)):
      tick = time.perf_counter()
      detections, _ = track.detect(frames[m], locator, chunk=FRAMES)
      SECONDS[name] = SECONDS.get(name, 0.0) + time.perf_counter() - tick
      linked = track.link(detections, reach, memory=3)
      identity = _identify(linked, centroids[m], present[m])
      keep = _pure_tracks(linked, identity)
      table = track.estimate(linked[linked["particle"].isin(keep)], analysis)
      c = counts.setdefault(name, {"tracks": 0, "impure_tracks": 0, "measured_tracks": 0})
      c["tracks"] += int(linked["particle"].nunique()) if len(linked) else 0
      c["impure_tracks"] += sum(v < 0 for v in identity.values())
      c["measured_tracks"] += len(table)
      for row in table.itertuples():
        sigma2 = row.sigma_um**2
        if name == "trackpy":
          results.setdefault("trackpy", []).append((row.D_msd_um2_s, sigma2, row.n_frames))
          results.setdefault("trackpy_cve", []).append((row.D_um2_s, sigma2, row.n_frames))
        else:
          label = "qdjax" if name == "model" else name
          results.setdefault(label, []).append((row.D_um2_s, sigma2, row.n_frames))
  # The estimator alone: every QD whose centroid stays in the field all movie long.
  blur = diffusion.raster_blur_coefficient(frame, dt, "centroid")
  a = float(frame.pixel_size_um)
  for m in range(len(frames)):
    for q in range(centroids.shape[2]):
      first, stop = _longest_run(present[m, :, q])
      if stop - first >= MIN_FRAMES:
        est = diffusion.cve(centroids[m, first:stop, q] * a, dt, blur)
        results.setdefault("truth_cve", []).append(
          (est.diffusion, est.localisation_variance, stop - first)
        )
  return results, counts, analysis


def summarise(estimates, d: float, analysis) -> dict:
  """Ratio statistics and the error relative to each track's own Cramer-Rao bound."""
  estimates = [e for e in estimates if np.isfinite(e[0])]
  if not estimates:
    return {"tracks": 0}
  values = np.array([e[0] for e in estimates], np.float64)
  lengths = np.array([e[2] for e in estimates])
  ratio = values / d
  q25, q50, q75 = np.percentile(ratio, [25, 50, 75])
  sigma2 = float(np.median([max(e[1], 0.0) for e in estimates]))
  bound_of = lambda n: diffusion.cramer_rao_diffusion(  # noqa: E731
    int(n), d, sigma2, analysis.blur, analysis.frame_interval_s
  )
  bounds = {int(n): bound_of(n) for n in np.unique(lengths)}
  per_track = np.array([bounds[int(n)] for n in lengths]) / d
  rmse = float(np.sqrt(np.mean((ratio - 1) ** 2)))
  return {
    "tracks": len(values),
    "median_frames": float(np.median(lengths)),
    "median_ratio": float(q50),
    "iqr_ratio": [float(q25), float(q75)],
    "mean_ratio": float(ratio.mean()),
    "mean_ratio_se": float(ratio.std(ddof=1) / math.sqrt(len(ratio))) if len(ratio) > 1 else None,
    "relative_rmse": rmse,
    # RMS of (D_est - D) / bound(track length): 1 for an efficient unbiased estimator.
    "rmse_over_bound": float(np.sqrt(np.mean(((ratio - 1) / per_track) ** 2))),
    "relative_bound_50_frames": bound_of(FRAMES) / d,
    "sigma_um": math.sqrt(sigma2),
  }


def run(repeats: int = 1, quick: bool = False) -> dict:
  del repeats  # accuracy, not timing: one pass
  start = time.perf_counter()
  num_movies = 3 if quick else 12
  diffusions = (0.1, 2.0) if quick else DIFFUSIONS
  validation = [simulate(d, 1 if quick else 2, 1000 + i) for i, d in enumerate(DIFFUSIONS)]
  locators, notes = make_locators(validation, quick)
  params = validation[0][3]
  dt = float(params.frame_interval_s)
  reach = track.search_range_px(max(DIFFUSIONS), dt, float(params.frame.pixel_size_um))
  rows: dict[str, dict] = {}
  counts_all: dict[str, dict] = {}
  for i, d in enumerate(tqdm(diffusions, desc="diffusion bench", unit="D")):
    frames, centroids, present, params = simulate(d, num_movies, 2000 + i)
    results, counts, analysis = run_pipelines(frames, centroids, present, params, locators, reach)
    for name, estimates in results.items():
      rows.setdefault(name, {})[str(d)] = summarise(estimates, d, analysis)
    counts_all[str(d)] = counts
  pooled = {
    name: float(np.mean([r["mean_ratio"] for r in by_d.values() if r.get("tracks")]))
    for name, by_d in rows.items()
  }
  targets = {}
  if "qdjax" in rows:
    q = rows["qdjax"]
    targets["qdjax_mean_ratio_in_0.95_1.05_at_every_D"] = all(
      0.95 <= r["mean_ratio"] <= 1.05 for r in q.values() if r.get("tracks")
    )
    targets["qdjax_rmse_within_1.5x_bound_at_every_D"] = all(
      r["rmse_over_bound"] <= 1.5 for r in q.values() if r.get("tracks")
    )
    targets["qdjax_rmse_below_trackpy_at_every_D"] = all(
      q[k]["relative_rmse"] < rows["trackpy"][k]["relative_rmse"]
      for k in q
      if q[k].get("tracks") and rows["trackpy"].get(k, {}).get("tracks")
    )
  return {
    "what": "diffusion",
    "preset": "invivo" if _preset() is not None else "paper+spec section 9 photon levels",
    "field_px": [SIZE, SIZE],
    "qds_per_field": QDS,
    "frames": FRAMES,
    "movies_per_D": num_movies,
    "frame_interval_s": dt,
    "blur_local": analysis.blur,
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
