"""Tracks and per-track diffusion coefficients from a movie (docs/spec.md, section 8).

    locate = locator.make("model")
    result = track.track_file("movie.tif", "tracks.csv", "diffusion.csv", locate, preset)

The pipeline: any localiser (a ``qdjax.locator.Locator``: frames in, per-frame [k, 3] x,
y, score out) runs on chunks of the movie, so memory is bounded by one chunk; the
detections are linked by ``trackpy.link``, with a search range set by the largest D
expected and the frame interval, and ``memory`` frames to bridge a blink or a missed
detection; each track's D comes from the covariance-based estimator (CVE) of
``qdjax.diffusion`` with the blur coefficient a localiser sees in this raster scan. The
naive MSD fit (``trackpy.imsd``, MSD = 4 D t through the origin over the first lags) is
reported beside it as the ecosystem's baseline.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from qdjax import diffusion, io, locator, movie

TRACK_COLUMNS = ["frame", "x", "y", "score", "particle"]
DIFFUSION_COLUMNS = [
  "particle",
  "n_frames",
  "D_um2_s",
  "D_se_um2_s",
  "sigma_um",
  "D_msd_um2_s",
]


def _trackpy():
  import trackpy

  trackpy.quiet()
  logging.getLogger("trackpy").setLevel(logging.ERROR)
  return trackpy


def search_range_px(
  max_diffusion: float,
  frame_interval_s: float,
  pixel_size_um: float,
  localisation_px: float = 1.0,
  quantile: float = 0.999,
) -> float:
  """Link search range: the ``quantile`` of a frame-to-frame step at the largest D.

  A 2D step with per-coordinate variance s^2 = 2 D dt / a^2 + 2 sigma^2 (px^2) has a
  Rayleigh length; its quantile q is s sqrt(-2 ln(1 - q)).
  """
  variance = 2 * max_diffusion * frame_interval_s / pixel_size_um**2 + 2 * localisation_px**2
  return float(math.sqrt(variance) * math.sqrt(-2 * math.log1p(-quantile)))


def detect(frames, locate: locator.Locator, chunk: int = 256, progress: bool = False):
  """Detections of every frame, streamed in chunks.

  Returns:
    (DataFrame frame, x, y, score; mean frame [h, w] float64).

  Raises:
    ValueError: NaN or infinite pixels (naming the frame).
  """
  rows, total = [], None
  with tqdm(total=len(frames), unit="frame", disable=not progress, desc="locate") as bar:
    for start, block in io.iter_chunks(frames, chunk):
      total = block.sum(0, dtype=np.float64) + (0 if total is None else total)
      for offset, found in enumerate(locate(block, progress=bar)):
        found = np.asarray(found, np.float64).reshape(-1, 3)
        rows.append(np.column_stack([np.full(len(found), start + offset), found]))
  table = np.concatenate(rows) if rows else np.zeros((0, 4))
  detections = pd.DataFrame(table, columns=["frame", "x", "y", "score"])
  detections["frame"] = detections["frame"].astype(int)
  return detections, total / max(len(frames), 1)


def link(detections: pd.DataFrame, search_range: float, memory: int = 3) -> pd.DataFrame:
  """``trackpy.link`` of detections (frame, x, y, score): adds ``particle``.

  When a dense subnetwork makes trackpy give up at ``search_range``, it retries with a
  range shrunk by 10% per step (trackpy's adaptive search), never silently dropping
  detections.
  """
  if len(detections) == 0:
    return detections.assign(particle=pd.Series(dtype=int))
  tp = _trackpy()
  linked = tp.link(
    detections,
    search_range,
    memory=memory,
    adaptive_stop=0.1 * search_range,
    adaptive_step=0.9,
  )
  linked = linked.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)
  return linked[TRACK_COLUMNS]


def track_positions(track: pd.DataFrame, pixel_size_um: float) -> np.ndarray:
  """[last - first + 1, 2] positions in um of one track, NaN rows for frames it skipped."""
  frames = track["frame"].to_numpy()
  out = np.full((frames.max() - frames.min() + 1, 2), np.nan)
  out[frames - frames.min()] = track[["x", "y"]].to_numpy() * pixel_size_um
  return out


@dataclasses.dataclass(frozen=True)
class Analysis:
  """How tracks are turned into D.

  Attributes:
    frame_interval_s: dt between frame starts.
    pixel_size_um: a.
    blur: R of the positions (``diffusion.raster_blur_coefficient``).
    localisation_variance_um2: known sigma^2 per coordinate, or None to estimate per track.
    min_frames: shorter tracks get no D.
    msd_lags: lags of the naive MSD fit.
  """

  frame_interval_s: float
  pixel_size_um: float
  blur: float
  localisation_variance_um2: float | None = None
  min_frames: int = 5
  msd_lags: int = 4


def estimate(tracks: pd.DataFrame, analysis: Analysis) -> pd.DataFrame:
  """Per-track D: CVE (blur- and noise-aware) and the naive MSD fit.

  Args:
    tracks: frame, x, y, particle (px).
    analysis: Analysis.

  Returns:
    DataFrame with ``DIFFUSION_COLUMNS``, one row per track of at least ``min_frames``
    frames; n_frames counts the frames the track spans.
  """
  rows = []
  msd = naive_msd(tracks, analysis)
  for particle, track in tracks.groupby("particle", sort=True):
    positions = track_positions(track, analysis.pixel_size_um)
    if len(positions) < analysis.min_frames:
      continue
    est = diffusion.cve(
      positions, analysis.frame_interval_s, analysis.blur, analysis.localisation_variance_um2
    )
    rows.append(
      (
        int(particle),
        len(positions),
        est.diffusion,
        est.diffusion_se,
        math.sqrt(max(est.localisation_variance, 0.0)),
        msd.get(int(particle), math.nan),
      )
    )
  return pd.DataFrame(rows, columns=DIFFUSION_COLUMNS)


def imsd(tracks: pd.DataFrame, analysis: Analysis, max_lag: int) -> pd.DataFrame:
  """``trackpy.imsd``: [lag time s, particle] MSD in um^2 (both coordinates summed)."""
  tp = _trackpy()
  return tp.imsd(
    tracks[["frame", "x", "y", "particle"]],
    mpp=analysis.pixel_size_um,
    fps=1.0 / analysis.frame_interval_s,
    max_lagtime=max_lag,
  )


def naive_msd(tracks: pd.DataFrame, analysis: Analysis) -> dict[int, float]:
  """{particle: D} from MSD = 4 D t through the origin over lags 1..msd_lags (trackpy.imsd)."""
  if len(tracks) == 0:
    return {}
  table = imsd(tracks, analysis, analysis.msd_lags)
  lags = table.index.to_numpy(np.float64)
  return {int(p): diffusion.msd_fit(lags, table[p].to_numpy()) for p in table.columns}


def ensemble(table: pd.DataFrame) -> dict:
  """D over tracks: inverse-variance weighted mean of the per-track CVE, with its SE."""
  ok = np.isfinite(table["D_um2_s"]) & (table["D_se_um2_s"] > 0)
  if not ok.any():
    return {"D_um2_s": math.nan, "D_se_um2_s": math.nan, "tracks": 0}
  weight = 1.0 / table.loc[ok, "D_se_um2_s"] ** 2
  mean = float(np.sum(weight * table.loc[ok, "D_um2_s"]) / weight.sum())
  return {
    "D_um2_s": mean,
    "D_se_um2_s": float(1 / math.sqrt(weight.sum())),
    "tracks": int(ok.sum()),
  }


def field_windows(
  tracks: pd.DataFrame, length: int, width: int, height: int, inset_px: float = 2.0
) -> pd.DataFrame:
  """Tracks cut into windows of ``length`` frames on a fixed grid, with edge weights.

  Tracks that stay long in a small field belong to slow particles: whether a particle is
  seen depends on its path. A rule that does not look at the path removes that bias: cut
  every track at frames 0, length, 2 length, ... of the movie, keep each window the track
  covers from its first to its last frame while every position lies inside the field
  inset by ``inset_px``, and weight it by ``diffusion.inclusion_weight`` (the inverse of the
  chance that a uniformly placed particle's window fits in the inset field). A weighted
  mean over the windows (``field_ensemble``) is then unbiased for particles spread evenly
  beyond the field (docs/diffusion.md, section 5).

  Args:
    tracks: frame, x, y, particle (px; the field spans [-1/2, width - 1/2]).
    length: frames per window (>= 3).
    width, height: the frame's size, px.
    inset_px: distance kept from the frame's edge, where a localiser sees only part of a
      spot.

  Returns:
    the windows' rows, with ``particle`` a new id per window, ``track`` the track it came
    from, ``start`` its first frame and ``weight`` its inclusion weight (px^-2).
  """
  if length < 3:
    raise ValueError(f"window length must be >= 3 frames, got {length}")
  lower = np.full(2, inset_px - 0.5)
  upper = np.array([width, height], np.float64) - 0.5 - inset_px
  if np.any(upper <= lower):
    raise ValueError(f"inset_px={inset_px} leaves no field in a {width}x{height} frame")
  if len(tracks) == 0:
    return tracks.assign(track=0, start=0, weight=0.0).iloc[:0]
  rows = tracks.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)
  frame = rows["frame"].to_numpy()
  particle = rows["particle"].to_numpy()
  xy = rows[["x", "y"]].to_numpy(np.float64)
  window = frame // length
  first = np.flatnonzero(
    np.concatenate([[True], (particle[1:] != particle[:-1]) | (window[1:] != window[:-1])])
  )
  start = window[first] * length
  complete = (frame[first] == start) & (np.maximum.reduceat(frame, first) == start + length - 1)
  weight = diffusion.inclusion_weight(
    np.minimum.reduceat(xy, first), np.maximum.reduceat(xy, first), lower, upper
  )
  weight = np.where(complete, weight, 0.0)
  group = np.repeat(np.arange(len(first)), np.diff(np.append(first, len(rows))))
  keep = weight[group] > 0
  out = rows[keep].assign(
    track=particle[keep], start=start[group][keep], weight=weight[group][keep]
  )
  out["particle"] = np.unique(group[keep], return_inverse=True)[1]
  return out.reset_index(drop=True)


def field_ensemble(windows: pd.DataFrame, table: pd.DataFrame) -> dict:
  """Edge-corrected D over windows: the inclusion-weighted mean of their CVE D, with its SE.

  Args:
    windows: ``field_windows`` output.
    table: ``estimate(windows, ...)``: one row per window.
  """
  if len(table) == 0:
    return {"D_um2_s": math.nan, "D_se_um2_s": math.nan, "windows": 0}
  weight = windows.groupby("particle")["weight"].first().reindex(table["particle"]).to_numpy()
  values = table["D_um2_s"].to_numpy(np.float64)
  mean, se = diffusion.weighted_mean(values, weight)
  return {"D_um2_s": mean, "D_se_um2_s": se, "windows": int(np.isfinite(values).sum())}


def analysis_for(preset, height: int, width: int, frame_interval_s=None, **kwargs) -> Analysis:
  """Analysis of a height x width movie recorded with ``preset``'s scan and optics.

  The frame interval defaults to ``height * (width * dwell + retrace)`` of this movie's
  size; the blur coefficient is what a localiser sees (``window='local'``).

  Raises:
    ValueError: a non-positive or non-finite interval, or one shorter than a frame's
      recording.
  """
  params = preset.sim_params(height=height, width=width)
  if frame_interval_s is None:
    frame_interval_s = diffusion.default_frame_interval(params)
  frame_interval_s = float(frame_interval_s)
  if not math.isfinite(frame_interval_s) or frame_interval_s <= 0:
    raise ValueError(f"frame_interval_s must be a positive number, got {frame_interval_s}")
  recording = float(movie.frame_span(params))
  if frame_interval_s < recording * (1 - 1e-6):
    raise ValueError(
      f"frame_interval_s={frame_interval_s} is shorter than the {recording:.6g} s a "
      f"{height}x{width} frame takes to record"
    )
  blur = diffusion.raster_blur_coefficient(params, frame_interval_s, "local")
  return Analysis(
    frame_interval_s=frame_interval_s,
    pixel_size_um=float(params.pixel_size_um),
    blur=blur,
    **kwargs,
  )


def track_file(
  input_path: str,
  tracks_path: str,
  diffusion_path: str,
  locate: locator.Locator,
  preset,
  *,
  frame_interval_s: float | None = None,
  max_diffusion: float | None = None,
  memory: int = 3,
  min_frames: int = 5,
  chunk: int = 256,
  min_score: float | None = None,
  window: int = 20,
  plot_path: str | None = None,
  progress: bool = True,
) -> dict:
  """Localise, link and estimate D for a movie file; writes both CSVs (and a PNG).

  Args:
    input_path: .npy, .npz (``images``) or .tif movie, (T, H, W) with T >= 2.
    tracks_path: CSV ``frame,x,y,score,particle``.
    diffusion_path: CSV ``particle,n_frames,D_um2_s,D_se_um2_s,sigma_um,D_msd_um2_s``.
    locate: any localiser (``qdjax.locator.Locator``).
    preset: the microscope (pixel size, dwell, retrace, sigma_xy) and its D range.
    frame_interval_s: default ``height * (width * dwell + retrace)``.
    max_diffusion: largest D to link for (default: the top of the preset's range).
    memory: frames a track may skip (blinks, misses).
    min_frames: shortest track that gets a D.
    chunk: frames per localiser call (bounds memory).
    min_score: drop detections scoring below this before linking.
    window: frames per window of the edge-corrected ensemble D (``field_windows``).
    plot_path: PNG of the tracks over the mean frame and their MSD curves.

  Returns:
    summary dict: frames, detections, tracks, ensemble D (inverse-variance weighted over
    tracks) and field_ensemble D (edge-corrected, over ``window``-frame windows), search
    range, R, frame interval.

  Raises:
    FileNotFoundError, ValueError: bad input, before anything is written.
  """
  for path in (tracks_path, diffusion_path, plot_path):
    if path is not None:
      io.check_output_path(path)
  if memory < 0 or min_frames < 3 or chunk < 1 or window < 3:
    raise ValueError(
      f"need memory >= 0, min_frames >= 3, chunk >= 1, window >= 3; got {memory}, "
      f"{min_frames}, {chunk}, {window}"
    )
  frames = io.open_frames(input_path, movie=True)
  t, h, w = frames.shape
  analysis = analysis_for(preset, h, w, frame_interval_s, min_frames=min_frames)
  if max_diffusion is None:
    max_diffusion = float(max(preset.train_diffusion))
  if not math.isfinite(max_diffusion) or max_diffusion <= 0:
    raise ValueError(f"max_diffusion must be a positive number, got {max_diffusion}")
  reach = search_range_px(max_diffusion, analysis.frame_interval_s, analysis.pixel_size_um)
  detections, mean_frame = detect(frames, locate, chunk, progress)
  if min_score is not None:
    detections = detections[detections["score"] >= min_score].reset_index(drop=True)
  tracks = link(detections, reach, memory)
  table = estimate(tracks, analysis)
  windows = field_windows(tracks, window, w, h)
  field = field_ensemble(
    windows, estimate(windows, dataclasses.replace(analysis, min_frames=window))
  )
  io.write_csv(tracks_path, tracks, {"x": "%.4f", "y": "%.4f", "score": "%.6g"})
  io.write_csv(diffusion_path, table, {c: "%.6g" for c in DIFFUSION_COLUMNS[2:]})
  if plot_path is not None:
    from qdjax import plotting

    plotting.tracks_figure(mean_frame, tracks, table, analysis, plot_path)
  return {
    "frames": t,
    "detections": len(detections),
    "tracks": int(tracks["particle"].nunique()) if len(tracks) else 0,
    "tracks_with_D": len(table),
    "ensemble": ensemble(table),
    "field_ensemble": field,
    "search_range_px": reach,
    "blur_coefficient": analysis.blur,
    "frame_interval_s": analysis.frame_interval_s,
  }
