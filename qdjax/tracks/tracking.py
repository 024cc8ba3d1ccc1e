"""Tracks and per-track diffusion coefficients from a movie (docs/spec.md, section 8).

    locate = locator.make("model")
    result = tracking.track_movie(frames, locate, preset)   # files.track_file for a file

The pipeline, every choice made from the movie itself (docs/diffusion.md, section 7):

1. any localiser (a ``qdjax.localize.locator.Locator``: frames in, per-frame [k, 3] x, y, score
   out) runs on chunks of the movie, so memory is bounded by one chunk; the tissue's
   motion is read from the background (``tissue_motion``), and where the background has
   structure (textured tissue) the movie is localised again without it
   (``qdjax.tracks.background``);
2. the detections are thresholded where the movie's score distribution splits into
   noise and QDs (``score_threshold``), or, where it does not split, at the localiser's
   own default cut (``choose_min_score``);
3. the size of a frame-to-frame step is fitted to the distances between detections of
   consecutive frames (``step_scale``), and ``trackpy.link`` links with a search range
   from it, bridging ``memory`` missed frames;
4. tracks with fewer than ``min_detections`` detections are dropped (noise rarely
   persists; a D from fewer displacements is too imprecise to use);
5. motion common to all tracks (stage drift) is estimated and, where it is significant,
   subtracted (``common_motion``);
6. each track's D comes from the covariance-based estimator (CVE) of ``qdjax.tracks.diffusion``,
   per axis with the blur coefficients a localiser sees in this raster scan, gaps
   allowed; where the movie's localisation error dominates its steps, from the
   maximum-likelihood estimator instead. The naive MSD fit (``trackpy.imsd``, MSD = 4 D t
   through the origin over the first lags) is reported beside it as the ecosystem's
   baseline.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from qdjax import io
from qdjax.localize import locator
from qdjax.tracks import diffusion

# The modules that load JAX are imported where they are used: a command line that refuses
# its input, and anything that only reads tracks, never loads it.

TRACK_COLUMNS = ["frame", "x", "y", "score", "particle"]
DIFFUSION_COLUMNS = [
  "particle",
  "n_detections",
  "n_frames_spanned",
  "D_um2_s",
  "D_se_um2_s",
  "estimator",
  "D_x_um2_s",
  "D_y_um2_s",
  "sigma_x_um",
  "sigma_y_um",
  "D_msd_um2_s",
]
MIN_DETECTIONS = 10  # a D from 9 displacements has a relative SE of about 0.3 at best
LINK_QUANTILE = 0.9999  # the search range holds this share of a QD's steps
MIN_REGISTER_PX = 32  # smaller frames are not registered for tissue motion
MIN_GAIN_STEPS = 20  # QD steps below which the registration's gain is not fitted
MAX_GAIN_SE = 0.1  # an axis whose gain is less sure than this keeps the registration's scale
MAX_GAIN = 2.0  # the gain fitted is kept within [0, MAX_GAIN]


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
  quantile: float = LINK_QUANTILE,
) -> float:
  """Link search range: the ``quantile`` of a frame-to-frame step at the largest D.

  A 2D step with per-coordinate variance s^2 = 2 D dt / a^2 + 2 sigma^2 (px^2) has a
  Rayleigh length; its quantile q is s sqrt(-2 ln(1 - q)).
  """
  variance = 2 * max_diffusion * frame_interval_s / pixel_size_um**2 + 2 * localisation_px**2
  return rayleigh_quantile(math.sqrt(variance), quantile)


def rayleigh_quantile(scale: float, quantile: float = LINK_QUANTILE) -> float:
  """The ``quantile`` of a Rayleigh length of this scale (per-coordinate sd)."""
  return float(scale * math.sqrt(-2 * math.log1p(-quantile)))


# --- choices made from the movie ------------------------------------------------------------


def score_threshold(scores, separation: float = 4.0) -> float | None:
  """Where the movie's detection scores split into noise and QDs; None if they do not.

  A localiser run without a threshold returns two kinds of peak: noise, scoring low and
  many (the model caps them by area), and QDs, scoring high. Otsu's split of the
  log-scores (the cut maximising the between-class variance) separates them; it is used
  only when the two classes are clearly apart (Ashman's D = sqrt(2) |m1 - m0| /
  sqrt(s0^2 + s1^2) > ``separation``; Otsu's halves of one normal mode give 2.7, of a
  uniform one 3.5), so a localiser that already thresholds (one mode) keeps everything.
  Nothing here knows the ground truth or the localiser's training.

  Args:
    scores: [n] detection scores (any scale; log-scaled when all are positive).
    separation: the smallest Ashman's D that counts as two classes.
  """
  scores = np.asarray(scores, np.float64)
  scores = scores[np.isfinite(scores)]
  if len(scores) < 10:
    return None
  positive = bool(np.all(scores > 0))
  values = np.log(scores) if positive else scores
  order = np.sort(values)
  n = len(order)
  k = np.arange(1, n)  # cut between order[k - 1] and order[k]
  cum = np.cumsum(order)[:-1]
  w0, w1 = k / n, 1 - k / n
  m0, m1 = cum / k, (order.sum() - cum) / (n - k)
  between = w0 * w1 * (m1 - m0) ** 2
  between[order[1:] == order[:-1]] = -1  # cut only between distinct values
  best = int(np.argmax(between))
  low, high = order[: best + 1], order[best + 1 :]
  if len(low) < 2 or len(high) < 2:
    return None
  ashman = math.sqrt(2) * (high.mean() - low.mean()) / math.sqrt(low.var() + high.var() + 1e-300)
  if ashman <= separation:
    return None
  cut = float((order[best] + order[best + 1]) / 2)
  return float(math.exp(cut)) if positive else cut


def choose_min_score(scores, min_score=None, fallback=None) -> tuple[float | None, str]:
  """The score cut of a movie's detections and where it came from: ``min_score`` when
  given; else the movie's own split (``score_threshold``); else, when its scores do not
  split (a few QDs among many more noise peaks, or QDs at every focus and brightness),
  ``fallback``, the localiser's own default cut (``locator.default_min_score``); else
  none (everything is kept)."""
  if min_score is not None:
    if math.isnan(min_score):
      raise ValueError("min_score must be a number, got nan")
    return float(min_score), "given"
  cut = score_threshold(scores)
  if cut is not None:
    return cut, "score split"
  if fallback is not None:
    return float(fallback), "the localiser's default (scores not bimodal)"
  return None, "none (scores not bimodal)"


@dataclasses.dataclass(frozen=True)
class StepScale:
  """The size of a frame-to-frame step, fitted to a movie's detections.

  Attributes:
    scale_px: per-coordinate sd of a step (Rayleigh scale), px; NaN if not measured.
    search_range_px: ``rayleigh_quantile(scale_px)``, the link range.
    pairs: pair distances the fit used.
    limit_px: pairs were counted up to this distance.
    source: 'fit', 'fit at its limit' (steps about as long as the limit: the range is
      the limit) or 'fallback' (too few detections to fit: the limit, since with few
      detections a wide range confuses few QDs).
  """

  scale_px: float
  search_range_px: float
  pairs: int
  limit_px: float
  source: str


def step_scale(
  detections: pd.DataFrame, width: int, height: int, min_pairs: int = 30, min_room_px: float = 3.0
) -> StepScale:
  """Fits the step of a QD between consecutive frames to the detections' pair distances.

  For each detection, every detection of the next frame within L_i px is a pair, L_i the
  smaller of ``L`` = min(width, height) / 4 and the detection's distance to the field's
  edge (so the disc lies in the field; detections with L_i < ``min_room_px`` are skipped).
  One of the pairs is the same QD, displaced by a 2D Gaussian step (a Rayleigh distance,
  scale s, truncated at L_i); the others lie uniformly around it (density 2 r / L_i^2). The
  mixture is fitted by maximum likelihood in (s, share of true pairs). No linking and no D
  range is assumed, and a QD that moves far per frame still counts (a first linking pass
  at a guessed range would cut its steps).
  """
  from scipy import optimize, spatial

  limit = min(width, height) / 4.0
  frames = detections["frame"].to_numpy()
  xy = detections[["x", "y"]].to_numpy(np.float64)
  room = np.minimum(
    np.minimum(xy[:, 0] + 0.5, width - 0.5 - xy[:, 0]),
    np.minimum(xy[:, 1] + 0.5, height - 0.5 - xy[:, 1]),
  )
  room = np.minimum(room, limit)
  distances, rooms = [], []
  by_frame = {f: np.flatnonzero(frames == f) for f in np.unique(frames)}
  for f, rows in by_frame.items():
    following = by_frame.get(f + 1)
    sources = rows[room[rows] >= min_room_px]
    if following is None or len(sources) == 0:
      continue
    tree = spatial.cKDTree(xy[following])
    for source in sources:
      hits = tree.query_ball_point(xy[source], room[source])
      distances.extend(np.linalg.norm(xy[following[hits]] - xy[source], axis=1))
      rooms.extend([room[source]] * len(hits))
  r, cap = np.asarray(distances, np.float64), np.asarray(rooms, np.float64)
  if len(r) < min_pairs:
    # Few detections: few QDs to confuse, so the widest range measured costs little.
    return StepScale(math.nan, limit, len(r), limit, "fallback")

  def nll(v):
    scale, share = math.exp(v[0]), 1 / (1 + math.exp(-v[1]))
    kept = -np.expm1(-(cap**2) / (2 * scale**2))
    true = r / scale**2 * np.exp(-(r**2) / (2 * scale**2)) / kept
    background = 2 * r / cap**2
    return -float(np.sum(np.log(share * true + (1 - share) * background + 1e-300)))

  start = [math.log(max(np.median(r) / 2, 0.1)), 0.0]
  fit = optimize.minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-4})
  scale = float(math.exp(fit.x[0]))
  reach = rayleigh_quantile(scale)
  if reach >= limit:
    return StepScale(scale, limit, len(r), limit, "fit at its limit")
  return StepScale(scale, max(reach, 1.0), len(r), limit, "fit")


# --- the pipeline's steps --------------------------------------------------------------------


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

  Raises:
    ValueError: the detections are too dense to link even at a tenth of the range (most of
      them noise: cut them by score first).
  """
  if len(detections) == 0:
    return detections.assign(particle=pd.Series(dtype=int))[TRACK_COLUMNS]
  tp = _trackpy()
  try:
    linked = tp.link(
      detections,
      search_range,
      memory=memory,
      adaptive_stop=0.1 * search_range,
      adaptive_step=0.9,
    )
  except tp.SubnetOversizeException as e:
    per_frame = len(detections) / max(detections["frame"].nunique(), 1)
    raise ValueError(
      f"the detections are too dense to link ({per_frame:.0f} a frame; at a tenth of the "
      f"{search_range:.1f} px range trackpy still reports: {str(e).strip()}): most are "
      "likely noise; keep fewer with a higher min_score, or link over a shorter range with "
      "max_diffusion"
    ) from None
  linked = linked.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)
  return linked[TRACK_COLUMNS]


def keep_long(tracks: pd.DataFrame, min_detections: int) -> pd.DataFrame:
  """Tracks with at least ``min_detections`` detections."""
  if len(tracks) == 0:
    return tracks
  size = tracks.groupby("particle")["frame"].transform("size")
  return tracks[size >= min_detections].reset_index(drop=True)


@dataclasses.dataclass(frozen=True)
class Analysis:
  """How tracks are turned into D.

  Attributes:
    frame_interval_s: dt between frame starts.
    pixel_size_um: a.
    blur: R of the positions: one value, or (R_x, R_y) (``diffusion.localiser_blur``).
    localisation_variance_um2: known sigma^2 per coordinate, or None to estimate per track.
    min_frames: tracks with fewer detections get no D.
    msd_lags: lags of the naive MSD fit.
    estimator: 'cve', 'mle', or 'auto' (the MLE where the movie's pooled reduced
      localisation error exceeds ``diffusion.MLE_ABOVE_X``).
  """

  frame_interval_s: float
  pixel_size_um: float
  blur: float | tuple[float, float]
  localisation_variance_um2: float | None = None
  min_frames: int = MIN_DETECTIONS
  msd_lags: int = 4
  estimator: str = "auto"

  @property
  def mean_blur(self) -> float:
    return float(np.mean(self.blur))


@dataclasses.dataclass(frozen=True)
class CommonMotion:
  """Motion shared by all tracks (stage drift), per frame.

  Attributes:
    frames: [F] frame numbers (the movie's, first to last).
    offset_px: [F, 2] cumulative common displacement (x, y) since the first frame, px.
    tracks_per_step: [F] tracks measuring the step from each frame to the next (0 last).
    chi2, dof: the jitter test over the steps with >= 3 tracks.
    p_value: the combined test of no common motion (jitter and steady drift).
    applied: whether it is subtracted before D.
  """

  frames: np.ndarray
  offset_px: np.ndarray
  tracks_per_step: np.ndarray
  chi2: float
  dof: int
  p_value: float
  applied: bool

  def table(self) -> pd.DataFrame:
    return pd.DataFrame(
      {
        "frame": self.frames,
        "drift_x_px": self.offset_px[:, 0],
        "drift_y_px": self.offset_px[:, 1],
        "tracks": self.tracks_per_step,
      }
    )


def _unit_steps(tracks: pd.DataFrame):
  """(frame of the first detection, [n, 2] step px, particle) of each one-frame step."""
  rows = tracks.sort_values(["particle", "frame"], kind="stable")
  frame = rows["frame"].to_numpy()
  particle = rows["particle"].to_numpy()
  xy = rows[["x", "y"]].to_numpy(np.float64)
  unit = (particle[1:] == particle[:-1]) & (frame[1:] == frame[:-1] + 1)
  return frame[:-1][unit], (xy[1:] - xy[:-1])[unit], particle[:-1][unit]


def tissue_gain(tracks: pd.DataFrame, shift: np.ndarray, min_steps: int = MIN_GAIN_STEPS):
  """([2] gain, [2] its standard error): per axis, the factor by which the tissue's
  motion taken out of ``tracks`` is to be scaled so that their one-frame steps no longer
  follow it.

  A registration against a reference built from the same movie can read the motion a few
  per cent too small or too large: where the texture changes with depth and the tissue moves
  in depth with its breathing, the frames at one depth can agree with each other on a shift
  that is off in proportion to the motion. The QDs do not share that error: in the tissue's
  frame their steps are independent of the tissue's. A corrected track's step is its own
  step plus (d_true - d_read), the tissue's step less the one taken out; the factor g that
  makes the variance of d_true - g d_read, which D pays for, smallest is 1 + beta, where
  beta is the slope of the corrected steps on the steps taken out (least squares with an
  intercept, which takes a steady flow of the QDs; ``common_motion`` treats what is left).
  So g undoes a trace read g times too small, and shrinks towards 0 a trace that is mostly
  the registration's noise. A wrong beta costs a step of variance s^2 about s^2 / n on
  average (n steps); an axis whose beta is less sure than ``MAX_GAIN_SE`` (the trace hardly
  moves on it) keeps gain 1, and g is kept within [0, ``MAX_GAIN``].

  Args:
    tracks: linked, corrected detections (frame, x, y, particle).
    shift: [len(tracks), 2] the displacement taken out of each, px.
    min_steps: fewer one-frame steps leave the gain at 1.
  """
  shift = np.asarray(shift, np.float64)
  _, dr, _ = _unit_steps(tracks)
  _, ds, _ = _unit_steps(tracks.assign(x=shift[:, 0], y=shift[:, 1]))
  gain, se = np.ones(2), np.full(2, np.inf)
  n = len(dr)
  if n < max(min_steps, 3):
    return gain, se
  for a in (0, 1):
    x, y = ds[:, a] - ds[:, a].mean(), dr[:, a] - dr[:, a].mean()
    sxx = float(np.sum(x * x))
    if sxx <= 0:
      continue
    beta = float(np.sum(x * y)) / sxx
    se[a] = math.sqrt(float(np.sum((y - beta * x) ** 2)) / (n - 2) / sxx)
    if se[a] <= MAX_GAIN_SE:
      gain[a] = min(max(1.0 + beta, 0.0), MAX_GAIN)
  return gain, se


def common_motion(tracks: pd.DataFrame, num_frames: int, alpha: float = 1e-3) -> CommonMotion:
  """The mean step of all tracks per frame, and whether it differs from zero.

  Every step f -> f+1 measured by N >= 3 tracks gives a mean m_f and a t statistic
  m_f sqrt(N) / s_f per axis (Student t, N - 1 dof, under no common motion), turned into
  a normal z; sum z^2 is chi-square with 2 dof per step (jitter). A steady drift, small
  per step, shows better in the mean of m_f over the frames (a t-test per axis). The
  motion is applied (subtracted before D) when the three tests, Bonferroni-combined into
  ``p_value``, reject at level ``alpha``: subtracting a mean of N steps costs
  each track 1/N of its step variance, which ``estimate`` restores, but it also adds noise,
  so it is not done when there is nothing to remove.
  """
  from scipy import stats

  f, step, _ = _unit_steps(tracks) if len(tracks) else (np.zeros(0, int), np.zeros((0, 2)), None)
  frames = np.arange(num_frames)
  count = np.bincount(f, minlength=num_frames)[:num_frames]
  total = np.stack([np.bincount(f, step[:, c], num_frames)[:num_frames] for c in range(2)], 1)
  square = np.stack([np.bincount(f, step[:, c] ** 2, num_frames)[:num_frames] for c in range(2)], 1)
  used = count >= 3
  mean = np.where(used[:, None], total / np.maximum(count, 1)[:, None], 0.0)
  n = np.maximum(count, 2)[:, None]
  var = np.maximum(square - n * mean**2, 0) / (n - 1)
  chi2, dof, p = 0.0, 0, 1.0
  if used.any():
    t = mean[used] * np.sqrt(n[used]) / np.sqrt(np.maximum(var[used], 1e-300))
    z = stats.norm.isf(np.clip(stats.t.sf(np.abs(t), n[used] - 1), 1e-300, 0.5))
    chi2, dof = float(np.sum(z**2)), int(z.size)
    tests = [float(stats.chi2.sf(chi2, dof))]
    if used.sum() >= 3:  # a steady drift: the mean step over frames, per axis
      velocity = stats.ttest_1samp(mean[used], 0.0, axis=0)
      tests += [float(v) for v in np.nan_to_num(velocity.pvalue, nan=1.0)]
    p = min(1.0, len(tests) * min(tests))  # Bonferroni over the three tests
  offset = np.vstack([np.zeros((1, 2)), np.cumsum(mean, axis=0)[:-1]])
  return CommonMotion(frames, offset, count, chi2, dof, p, bool(dof and p < alpha))


def subtract_motion(tracks: pd.DataFrame, motion: CommonMotion) -> pd.DataFrame:
  """Tracks with the common motion taken out of their positions, and ``step_scale``: per
  detection, the factor sqrt(N/(N - 1)) that restores the step variance a mean of N steps
  removed (1 where none was subtracted)."""
  frame = tracks["frame"].to_numpy()
  out = tracks.copy()
  out["x"] = tracks["x"].to_numpy() - motion.offset_px[frame, 0]
  out["y"] = tracks["y"].to_numpy() - motion.offset_px[frame, 1]
  n = motion.tracks_per_step[frame].astype(np.float64)
  out["step_scale"] = np.where(n >= 3, np.sqrt(n / np.maximum(n - 1, 1)), 1.0)
  return out


def _track_steps(track: pd.DataFrame, pixel_size_um: float):
  """(displacements [n, 2] um, lags [n]) of one track; one-frame steps rescaled by the
  track's ``step_scale`` column where it has one."""
  frames = track["frame"].to_numpy()
  xy = track[["x", "y"]].to_numpy(np.float64) * pixel_size_um
  dx, lags = np.diff(xy, axis=0), np.diff(frames)
  if "step_scale" in track:
    scale = track["step_scale"].to_numpy()[:-1]
    dx = dx * np.where(lags == 1, scale, 1.0)[:, None]
  return dx, lags


def _use_mle(per_track, analysis: Analysis) -> bool:
  """Whether the movie's pooled reduced localisation error calls for the MLE."""
  if analysis.estimator != "auto":
    return analysis.estimator == "mle"
  ok = [e for e in per_track if np.isfinite(e.diffusion)]
  if not ok:
    return False
  n = np.array([e.num_displacements for e in ok], np.float64)
  d = float(np.sum(n * [e.diffusion for e in ok]) / n.sum())
  sigma2 = float(np.sum(n * [e.localisation_variance for e in ok]) / n.sum())
  x = diffusion.reduced_localisation_error(d, sigma2, analysis.frame_interval_s, analysis.blur)
  return x > diffusion.MLE_ABOVE_X


def estimate(tracks: pd.DataFrame, analysis: Analysis) -> pd.DataFrame:
  """Per-track D: CVE per axis (blur- and noise-aware, gaps allowed) or the MLE, and the
  naive MSD fit.

  The choice between the CVE and the MLE is made once per call, from the pooled moments of
  all tracks, not per track: a choice by each track's own noisy estimate correlates with
  that track's error and biased the mean over tracks by about +9% in simulation.

  Args:
    tracks: frame, x, y, particle (px); optionally ``step_scale`` (``subtract_motion``).
    analysis: Analysis.

  Returns:
    DataFrame with ``DIFFUSION_COLUMNS``, one row per track of at least ``min_frames``
    detections. D may be negative on a short or noisy track (the CVE is unbiased, not
    truncated); sigma is 0 where the estimated sigma^2 came out negative (the track's
    steps are less noisy than their own sampling error can resolve).
  """
  msd = naive_msd(tracks, analysis)
  found = []
  for particle, one in tracks.groupby("particle", sort=True):
    if len(one) < analysis.min_frames:
      continue
    one = one.sort_values("frame", kind="stable")
    dx, lags = _track_steps(one, analysis.pixel_size_um)
    variance = analysis.localisation_variance_um2
    est = diffusion.cve_steps(dx, lags, analysis.frame_interval_s, analysis.blur, variance)
    span = int(one["frame"].iloc[-1] - one["frame"].iloc[0] + 1)
    found.append((int(particle), len(one), span, est, dx, lags))
  unknown_sigma = analysis.localisation_variance_um2 is None
  if found and unknown_sigma and _use_mle([f[3] for f in found], analysis):
    found = [
      f[:3]
      + (diffusion.mle_steps(f[4], f[5], analysis.frame_interval_s, analysis.blur, f[3]),)
      + f[4:]
      for f in found
    ]
  rows = []
  for particle, count, span, est, *_ in found:
    d_axes = est.diffusion_axes or (math.nan, math.nan)
    s_axes = est.localisation_variance_axes or (math.nan, math.nan)
    rows.append(
      (
        particle,
        count,
        span,
        est.diffusion,
        est.diffusion_se,
        est.method,
        d_axes[0],
        d_axes[1],
        math.sqrt(max(s_axes[0], 0.0)),
        math.sqrt(max(s_axes[1], 0.0)),
        msd.get(particle, math.nan),
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


def _pooled(values, counts) -> tuple[float, float]:
  """Mean weighted by the displacements of each track, and its SE clustered by track."""
  values, counts = np.asarray(values, np.float64), np.asarray(counts, np.float64)
  keep = np.isfinite(values) & (counts > 0)
  values, counts = values[keep], counts[keep]
  if len(values) == 0:
    return math.nan, math.nan
  total = counts.sum()
  mean = float(np.sum(counts * values) / total)
  if len(values) < 2:
    return mean, math.nan
  spread = np.sum(counts**2 * (values - mean) ** 2) / total**2
  return mean, float(math.sqrt(spread * len(values) / (len(values) - 1)))


def ensemble(table: pd.DataFrame) -> dict:
  """D over tracks: the per-track D weighted by their displacements (the pooled moments),
  with a standard error clustered by track, and the same per axis with their z-score.

  A weight by the number of displacements keeps the mean unbiased: an inverse-variance
  weight is ~1/D^2 and favours the tracks that happened to read low. |z_xy| > 3 (D_x and
  D_y differ beyond their errors) points at drift, flow or a scan artefact.
  """
  finite = table[np.isfinite(table["D_um2_s"])] if len(table) else table
  if len(finite) == 0:
    nan = math.nan
    return {"D_um2_s": nan, "D_se_um2_s": nan, "tracks": 0, "D_x_um2_s": nan,
            "D_y_um2_s": nan, "z_xy": nan}  # fmt: skip
  counts = finite["n_detections"].to_numpy() - 1
  mean, se = _pooled(finite["D_um2_s"], counts)
  dx, dx_se = _pooled(finite["D_x_um2_s"], counts)
  dy, dy_se = _pooled(finite["D_y_um2_s"], counts)
  z = (dx - dy) / math.sqrt(dx_se**2 + dy_se**2) if dx_se > 0 and dy_se > 0 else math.nan
  return {
    "D_um2_s": mean,
    "D_se_um2_s": se,
    "tracks": len(finite),
    "D_x_um2_s": dx,
    "D_y_um2_s": dy,
    "z_xy": float(z),
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
  size; the blur coefficients (R_x, R_y) are what a localiser sees
  (``diffusion.localiser_blur``).

  Raises:
    ValueError: a non-positive or non-finite interval, or one shorter than a frame's
      recording.
  """
  from qdjax.sim import movie

  params = preset.sim_params(height=height, width=width)
  if frame_interval_s is None:
    frame_interval_s = movie.default_frame_interval(params)
  frame_interval_s = float(frame_interval_s)
  if not math.isfinite(frame_interval_s) or frame_interval_s <= 0:
    raise ValueError(f"frame_interval_s must be a positive number, got {frame_interval_s}")
  recording = float(movie.frame_span(params))
  if frame_interval_s < recording * (1 - 1e-6):
    raise ValueError(
      f"frame_interval_s={frame_interval_s} is shorter than the {recording:.6g} s a "
      f"{height}x{width} frame takes to record"
    )
  blur = diffusion.localiser_blur(params, frame_interval_s)
  return Analysis(
    frame_interval_s=frame_interval_s,
    pixel_size_um=float(params.pixel_size_um),
    blur=blur,
    **kwargs,
  )


@dataclasses.dataclass
class Result:
  """What ``track_movie`` found.

  Attributes:
    tracks: frame, x, y, score, particle (px) of the tracks kept (>= min_detections).
    diffusion: per-track D (``DIFFUSION_COLUMNS``).
    detections: every detection the localiser returned (frame, x, y, score).
    summary: counts, the choices made from the movie and the ensemble D values.
    motion: the common motion (``CommonMotion``).
    analysis: the ``Analysis`` used.
    mean_frame: [h, w] the movie's mean.
    windows: the edge-weighted windows of the tracks (``field_windows``), motion removed.
    populations: the D populations over tracks (``populations.fit_populations``), or None
      with fewer than 5 tracks.
    tissue: the tissue's motion read from the background (``registration.TissueMotion``),
      or None where not estimated.
    background: the movie's static background (``background.Background``; the frames
      were localised flattened where its ``applied``), or None where not estimated.
  """

  tracks: pd.DataFrame
  diffusion: pd.DataFrame
  detections: pd.DataFrame
  summary: dict
  motion: CommonMotion
  analysis: Analysis
  mean_frame: np.ndarray
  windows: pd.DataFrame
  populations: object = None
  tissue: object = None
  background: object = None

  def __iter__(self):
    """``tracks, per_track = result``."""
    return iter((self.tracks, self.diffusion))


def track_movie(
  frames,
  locate: locator.Locator,
  preset,
  *,
  frame_interval_s: float | None = None,
  max_diffusion: float | None = None,
  memory: int = 3,
  min_detections: int = MIN_DETECTIONS,
  chunk: int = 256,
  min_score: float | None = None,
  window: int = 20,
  drift: bool | None = None,
  tissue: bool | None = None,
  background: bool | None = None,
  estimator: str = "auto",
  motion_types: bool = True,
  progress: bool = False,
) -> Result:
  """Localise, link and estimate D for a movie (T, H, W); every default is read from the
  movie itself (see the module docstring), and each can be set instead.

  Args:
    frames: (T, H, W) array-like, T >= 2 (a memory map is read chunk by chunk).
    locate: any localiser (``qdjax.localize.locator.Locator``).
    preset: the microscope (pixel size, dwell, retrace, sigma_xy).
    frame_interval_s: default ``height * (width * dwell + retrace)``.
    max_diffusion: link for steps up to this D (um^2/s) instead of fitting the step size.
    memory: frames a track may skip (blinks, misses).
    min_detections: shortest track kept and given a D.
    chunk: frames per localiser call (bounds memory).
    min_score: drop detections scoring below this (default: ``choose_min_score``, the
      movie's score split, else the localiser's default cut).
    window: frames per window of the edge-corrected ensemble D (``field_windows``).
    drift: subtract the common motion: None, where it is significant; True; False.
    tissue: correct the detections for the tissue's motion read from the background
      (``qdjax.tracks.registration``): None, where it is significant; True; False (not
      even estimated).
    background: localise the movie less its static background read from the movie
      (``qdjax.tracks.background``; textured tissue is not taken for QDs): None, where the
      background has structure; True; False (not even estimated).
    estimator: 'auto', 'cve' or 'mle'.
    motion_types: classify each track's motion and fit D populations (``qdjax.tracks.populations``).
    progress: a progress bar over frames.

  Raises:
    ValueError: bad arguments, or frames that are not a (T >= 2, H, W) movie.
  """
  if memory < 0 or min_detections < 3 or chunk < 1 or window < 3:
    raise ValueError(
      f"need memory >= 0, min_detections >= 3, chunk >= 1, window >= 3; got {memory}, "
      f"{min_detections}, {chunk}, {window}"
    )
  if estimator not in ("auto", "cve", "mle"):
    raise ValueError(f"estimator must be 'auto', 'cve' or 'mle', got {estimator!r}")
  if min_score is not None and math.isnan(min_score):
    raise ValueError("min_score must be a number, got nan")
  if max_diffusion is not None and not (math.isfinite(max_diffusion) and max_diffusion > 0):
    raise ValueError(f"max_diffusion must be a positive number, got {max_diffusion}")
  if getattr(frames, "ndim", 0) != 3 or frames.shape[0] < 2:
    raise ValueError(f"a movie must be (T >= 2, H, W), got shape {getattr(frames, 'shape', ())}")
  t, h, w = frames.shape
  analysis = analysis_for(
    preset, h, w, frame_interval_s, min_frames=min_detections, estimator=estimator
  )
  detections, mean_frame = detect(frames, locate, chunk, progress)
  fallback = locator.default_min_score(locate)
  spot_px = float(preset.values["sigma_xy_um"]) / analysis.pixel_size_um
  found = None
  if tissue is not False:
    from qdjax.tracks import registration

    found = tissue_motion(
      frames, detections, registration.timing_for(preset, h, w, analysis.frame_interval_s),
      pixel_size_um=analysis.pixel_size_um, spot_sigma_px=spot_px,
      min_score=min_score, fallback_min_score=fallback, progress=progress,
    )  # fmt: skip
    if found is not None and tissue is True:
      found = dataclasses.replace(found, applied=True, reason=found.reason + "; applied as asked")
  still = None
  if background is not False:
    detections, still = without_background(
      frames, detections, locate, spot_sigma_px=spot_px, min_score=min_score,
      apply=background, chunk=chunk, progress=progress,
    )  # fmt: skip
  return track_detections(
    detections, t, h, w, analysis, max_diffusion=max_diffusion, memory=memory,
    min_score=min_score, window=window, drift=drift, motion_types=motion_types,
    mean_frame=mean_frame, tissue=found, fallback_min_score=fallback, background=still,
  )  # fmt: skip


def tissue_motion(
  frames,
  detections: pd.DataFrame,
  timing,
  *,
  pixel_size_um: float,
  spot_sigma_px: float = 1.0,
  min_score=None,
  fallback_min_score: float | None = None,
  progress: bool = False,
):
  """The tissue's motion read from the movie's background (``registration.estimate``),
  with the QDs (discs of 3 spot sds around the detections above the score cut,
  ``choose_min_score``) left out, searched up to ``registration.MAX_SHIFT_UM`` or a
  quarter of the frame; None for frames under ``MIN_REGISTER_PX`` on a side."""
  t, h, w = frames.shape
  if min(h, w) < MIN_REGISTER_PX:
    return None
  chosen, _ = choose_min_score(detections["score"], min_score, fallback_min_score)
  qds = detections if chosen is None else detections[detections["score"] >= chosen]
  from qdjax.tracks import registration

  reach = min(min(h, w) // 4, round(registration.MAX_SHIFT_UM / pixel_size_um))
  return registration.estimate(
    frames, timing, exclude=qds, exclude_radius_px=_qd_radius_px(spot_sigma_px),
    max_shift_px=max(registration.MIN_SHIFT_PX, reach), progress=progress,
  )  # fmt: skip


def _qd_radius_px(spot_sigma_px: float) -> float:
  """The disc left out around a QD when the background is read: 3 spot sds, >= 2 px."""
  return max(2.0, 3 * spot_sigma_px)


def without_background(
  frames,
  detections: pd.DataFrame,
  locate: locator.Locator,
  *,
  spot_sigma_px: float = 1.0,
  min_score=None,
  apply: bool | None = None,
  chunk: int = 256,
  progress: bool = False,
):
  """(detections, background): the movie's static background (``background.estimate``)
  and, where it is applied, the movie's detections localised again less it; else the
  detections given.

  The QDs left out of the background are discs of 3 spot sds around the detections above
  both the score cut (``choose_min_score``, with the localiser's default cut) and the
  localiser's ``locator.confident_score``: a bright patch of tissue the localiser
  half-believes is a QD stays in the background, where it belongs, while a QD that stays
  put is not taken for background. Every detection above the cut is left out of the test
  of structure (a dim QD moving through a flat field is no structure). ``apply``: flatten
  where the background has structure (None), always, never."""
  from qdjax.tracks import background as background_lib

  chosen, _ = choose_min_score(detections["score"], min_score, locator.default_min_score(locate))
  kept = detections if chosen is None else detections[detections["score"] >= chosen]
  confident_score = locator.confident_score(locate)
  confident = kept if confident_score is None else kept[kept["score"] >= confident_score]
  still = background_lib.estimate(
    frames, confident, _qd_radius_px(spot_sigma_px), apply=apply, candidates=kept
  )
  if still.applied:
    detections, _ = detect(background_lib.Flattened(frames, still), locate, chunk, progress)
  return detections, still


def track_detections(
  detections: pd.DataFrame,
  num_frames: int,
  height: int,
  width: int,
  analysis: Analysis,
  *,
  max_diffusion: float | None = None,
  memory: int = 3,
  min_score: float | None = None,
  window: int = 20,
  drift: bool | None = None,
  motion_types: bool = True,
  mean_frame=None,
  tissue=None,
  fallback_min_score: float | None = None,
  background=None,
) -> Result:
  """Steps 2-6 of the pipeline (module docstring) on a movie's detections (frame, x, y,
  score); ``track_movie``'s arguments, with ``analysis.min_frames`` the shortest track and
  ``tissue`` the tissue's motion (``registration.TissueMotion``; corrected for when its
  ``applied``), ``fallback_min_score`` the localiser's default cut
  (``choose_min_score``) and ``background`` the static background the detections were
  localised without (``background.Background``, reported in the summary)."""
  t, h, w = num_frames, height, width
  if max_diffusion is not None and (not math.isfinite(max_diffusion) or max_diffusion <= 0):
    raise ValueError(f"max_diffusion must be a positive number, got {max_diffusion}")
  chosen, chosen_source = choose_min_score(detections["score"], min_score, fallback_min_score)

  def linked_from(detections):
    kept = detections if chosen is None else detections[detections["score"] >= chosen]
    kept = kept.reset_index(drop=True)
    scale = step_scale(kept, w, h)
    if max_diffusion is None:
      reach, range_source = scale.search_range_px, f"step fit ({scale.source})"
    else:
      reach = search_range_px(max_diffusion, analysis.frame_interval_s, analysis.pixel_size_um)
      range_source = f"max_diffusion={max_diffusion:g}"
    return kept, scale, reach, range_source, link(kept, reach, memory)

  if tissue is not None and tissue.applied:
    # Corrected, linked, and corrected again with the registration's scale checked by the
    # tracks (``tissue_gain``).
    from qdjax.tracks import registration

    raw, detections = detections, registration.correct(detections, tissue)
    result = linked_from(detections)
    taken = detections[["frame", "x", "y"]].assign(
      sx=raw["x"].to_numpy() - detections["x"].to_numpy(),
      sy=raw["y"].to_numpy() - detections["y"].to_numpy(),
    )
    taken = result[-1].merge(taken.drop_duplicates(["frame", "x", "y"]), on=["frame", "x", "y"])
    gain, _ = tissue_gain(taken, taken[["sx", "sy"]].to_numpy())
    if np.any(gain != 1):  # linked anew, corrected with the scaled trace
      tissue = tissue.scaled(gain)
      detections = registration.correct(raw, tissue)
      result = linked_from(detections)
  else:
    result = linked_from(detections)
  kept, scale, reach, range_source, linked = result
  tracks = keep_long(linked, analysis.min_frames)
  motion = common_motion(tracks, t)
  apply = motion.applied if drift is None else bool(drift)
  motion = dataclasses.replace(motion, applied=apply)
  measured = subtract_motion(tracks, motion) if apply else tracks
  table = estimate(measured, analysis)
  found = None
  if motion_types and len(table):
    from qdjax.tracks import populations

    kinds = populations.classify(measured, analysis)
    table = table.merge(kinds, on="particle", how="left")
    try:
      found = populations.fit_populations(table, analysis)
    except ValueError:  # too few tracks for a mixture
      found = None
  windows = field_windows(measured, window, w, h)
  field = field_ensemble(
    windows,
    estimate(windows, dataclasses.replace(analysis, min_frames=3)),  # any window seen
  )
  summary = {
    "frames": t,
    "detections": len(detections),
    "detections_kept": len(kept),
    "min_score": chosen,
    "min_score_source": chosen_source,
    "step_scale_px": scale.scale_px,
    "search_range_px": reach,
    "search_range_source": range_source,
    "tracks_linked": int(linked["particle"].nunique()) if len(linked) else 0,
    "min_detections": analysis.min_frames,
    "tracks": int(tracks["particle"].nunique()) if len(tracks) else 0,
    "tracks_with_D": int(np.isfinite(table["D_um2_s"]).sum()) if len(table) else 0,
    "estimator": ",".join(sorted(set(table["estimator"]))) if len(table) else "none",
    "ensemble": ensemble(table),
    "field_ensemble": field,
    "drift": {
      "applied": apply,
      "p_value": motion.p_value,
      "total_px": [float(v) for v in motion.offset_px[-1]],
    },
    "motion_types": (
      {k: int(v) for k, v in table["motion"].value_counts().items()} if "motion" in table else {}
    ),
    "populations": None if found is None else found.table().to_dict("list"),
    "immobile_population": None if found is None else found.immobile,
    "tissue": None if tissue is None else tissue.summary(),
    "background": None if background is None else background.summary(),
    "blur_coefficient": [float(v) for v in np.broadcast_to(analysis.blur, (2,))],
    "frame_interval_s": analysis.frame_interval_s,
  }
  if mean_frame is None:
    mean_frame = np.zeros((h, w))
  return Result(
    tracks, table, detections, summary, motion, analysis, mean_frame, windows, found, tissue,
    background,
  )  # fmt: skip


def _tissue_line(tissue: dict | None) -> list[str]:
  if tissue is None:
    return []
  rms = ", ".join(f"{v:.2g}" for v in tissue["rms_px"])
  state = "corrected" if tissue["applied"] else "not corrected"
  gain = tissue.get("gain", [1.0, 1.0])
  scaled = (
    ""
    if gain == [1.0, 1.0]
    else ", scaled by the tracks' steps by " + ", ".join(f"{v:.2f}" for v in gain)
  )
  return [f"tissue motion {state}: {tissue['reason']}; rms (x, y) {rms} px{scaled}"]


def _background_line(background: dict | None) -> list[str]:
  if background is None:
    return []
  state = "localised flattened" if background["applied"] else "left as it is"
  return [
    f"background {state}: {background['reason']}; relative sd {background['relative_sd']:.2g}"
  ]


def describe(summary: dict) -> str:
  """A few lines a user reads after tracking: what was chosen from the movie, and D."""
  ens, field, drift = summary["ensemble"], summary["field_ensemble"], summary["drift"]
  threshold = summary["min_score"]
  cut = "none" if threshold is None else f"{threshold:.3g}"
  lines = [
    f"{summary['frames']} frames: {summary['detections']} detections, "
    f"{summary['detections_kept']} kept (min_score {cut}: {summary['min_score_source']})",
    f"linked within {summary['search_range_px']:.3g} px ({summary['search_range_source']}): "
    f"{summary['tracks_linked']} tracks, {summary['tracks']} of >= "
    f"{summary['min_detections']} detections kept, {summary['tracks_with_D']} with D "
    f"({summary['estimator']})",
    f"ensemble D = {ens['D_um2_s']:.4g} +- {ens['D_se_um2_s']:.2g} um^2/s "
    f"(x {ens['D_x_um2_s']:.4g}, y {ens['D_y_um2_s']:.4g}); edge-corrected over "
    f"{field['windows']} windows: {field['D_um2_s']:.4g} +- {field['D_se_um2_s']:.2g} um^2/s",
    *_tissue_line(summary.get("tissue")),
    *_background_line(summary.get("background")),
    "common motion "
    + ("subtracted" if drift["applied"] else "not subtracted")
    + f" (p = {drift['p_value']:.2g}, total {drift['total_px'][0]:.2f}, "
    f"{drift['total_px'][1]:.2f} px)",
  ]
  if summary.get("motion_types"):
    lines.append(
      "motion: " + ", ".join(f"{n} {k}" for k, n in sorted(summary["motion_types"].items()))
    )
  pops = summary.get("populations")
  if pops:
    parts = [
      f"D {d:.3g} +- {se:.2g} ({100 * f:.0f}%)"
      for d, se, f in zip(pops["D_um2_s"], pops["D_se_um2_s"], pops["fraction"], strict=True)
    ]
    lines.append(f"populations ({len(parts)}, by BIC): " + "; ".join(parts))
  if abs(ens.get("z_xy", 0.0)) > 3:
    lines.append(
      f"warning: D_x and D_y differ by {ens['z_xy']:.1f} standard errors: drift, flow or a "
      "scan artefact"
    )
  return "\n".join(lines)
