"""Diffusion coefficients from tracks, corrected for motion blur and localisation error.

A track's positions r_f are not instantaneous: each is a weighted time-average of the
path over the part of the frame that the measurement saw, plus a localisation error of
variance sigma^2 per coordinate. For such data Vestergaard, Blainey and Flyvbjerg
(Phys. Rev. E 89, 022726, 2014) give the moments of the displacements dx_f = x_{f+1} - x_f
per coordinate, with frame interval dt and blur coefficient R:

    <dx_f^2>          = 2 D dt (1 - 2R) + 2 sigma^2
    <dx_f dx_{f+1}>   = 2 D dt R - sigma^2
    <dx_f dx_{f+j}>   = 0  for j >= 2

and the covariance-based estimator (CVE) that solves them:

    D       = <dx^2> / (2 dt) + <dx_f dx_{f+1}> / dt        (no R needed)
    sigma^2 = R <dx^2> + (2R - 1) <dx_f dx_{f+1}>

or, when sigma^2 is known (e.g. from the detector), ``D = (<dx^2> - 2 sigma^2) /
(2 (1 - 2R) dt)``. R = (1/dt) * integral of F(t)(1 - F(t)) dt, F the cumulative weight of
the measurement's time-average. ``raster_blur_coefficient`` gives R for this raster scan,
both for the trajectory centroid (uniform weight over the recorded samples) and for what
a localiser sees (the lines near the QD); docs/diffusion.md derives both.

Missing frames (a track bridging a blink) are NaN rows: displacements and products are
taken only between consecutive frames that both exist.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

# --- the blur coefficient -----------------------------------------------------------------


def blur_coefficient(times, weights, frame_interval_s: float) -> float:
  """R of a measurement that averages the path with ``weights`` at ``times``.

  R = (1/dt) * sum over the gaps between consecutive samples of (gap * F (1 - F)), F the
  cumulative weight up to the gap: the exact value for a weighted mean of samples of a
  Brownian path (Vestergaard et al.'s integral with a discrete shutter).

  Args:
    times: [n] seconds, any order.
    weights: [n] non-negative, not all zero.
    frame_interval_s: dt between measurements.
  """
  times = np.asarray(times, np.float64).reshape(-1)
  weights = np.asarray(weights, np.float64).reshape(-1)
  order = np.argsort(times, kind="stable")
  times, weights = times[order], weights[order]
  cumulative = np.cumsum(weights)[:-1] / weights.sum()
  return float(np.sum(np.diff(times) * cumulative * (1 - cumulative)) / frame_interval_s)


def raster_sample_times(height: int, width: int, substeps: int, dwell_s, retrace_s):
  """[height, width*substeps] sample times in float64 (host), as ``scan.sample_times``."""
  line = width * dwell_s + retrace_s
  fraction = (np.arange(substeps) + 0.5) / substeps
  columns = (np.arange(width)[:, None] + fraction[None, :]).reshape(-1) * dwell_s
  return np.arange(height)[:, None] * line + columns[None, :]


def raster_blur_coefficient(
  params, frame_interval_s: float, window: str = "local", row_px: float | None = None
) -> float:
  """R of a raster scan for the trajectory centroid or for a localiser's view.

  Args:
    params: frame Params (height, width, substeps, dwell, retrace, sigma_xy, pixel size).
    frame_interval_s: dt between frames.
    window: 'centroid': uniform weight over all recorded samples (the spec's ground truth);
      closed form ``(H W dwell + retrace (H^2 - 1)/H) / (6 dt)`` for K -> infinity.
      'local': R of x for a localiser: each line weighted by the share of the QD's photons
      it records, ``g(r) = exp(-(r - y)^2 / (2 s^2))``, s = sigma_xy / a; about
      ``s / (sqrt(pi) H)`` at the default interval.
      'local_y': R of y for a localiser: line r moves the spot's row centroid by its
      weight ``(r - y)^2 g(r)`` (the flanks of the spot carry the row position, the middle
      line none); about ``0.987 s / H``, 1.75 times R of x (docs/diffusion.md, section 3).
    row_px: the QD's row for 'local' (default: the frame's middle row).
  """
  h, w, k = params.height, params.width, params.substeps
  times = raster_sample_times(h, w, k, float(params.dwell_s), float(params.retrace_s))
  if window == "centroid":
    weights = np.ones_like(times)
  elif window in ("local", "local_y"):
    row = (h - 1) / 2 if row_px is None else row_px
    spread = float(params.sigma_xy_um) / float(params.pixel_size_um)
    rows = np.arange(h, dtype=np.float64)
    line = np.exp(-((rows - row) ** 2) / (2 * spread**2))
    if window == "local_y":
      line = line * (rows - row) ** 2
    weights = np.broadcast_to(line[:, None], times.shape)
  else:
    raise ValueError(f"window must be 'centroid', 'local' or 'local_y', got {window!r}")
  return blur_coefficient(times, weights, frame_interval_s)


def localiser_blur(params, frame_interval_s: float) -> tuple[float, float]:
  """(R_x, R_y) of what a localiser sees in this raster scan ('local', 'local_y')."""
  return (
    raster_blur_coefficient(params, frame_interval_s, "local"),
    raster_blur_coefficient(params, frame_interval_s, "local_y"),
  )


def centroid_blur_closed_form(params, frame_interval_s: float) -> float:
  """The 'centroid' R in the continuous-dwell limit (K -> infinity); see docs/diffusion.md."""
  h = params.height
  recording = h * params.width * float(params.dwell_s)
  return (recording + float(params.retrace_s) * (h * h - 1) / h) / (6 * frame_interval_s)


# --- the estimators ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Per-track diffusion estimate.

  Attributes:
    diffusion: D, um^2/s (or the positions' unit^2/s): the mean over coordinates.
    diffusion_se: its standard error.
    localisation_variance: sigma^2 per coordinate, mean over coordinates (estimated, or the
      one given).
    num_displacements: displacements between consecutive detections (per coordinate).
    diffusion_axes: D of each coordinate (CVE).
    diffusion_se_axes: their standard errors.
    localisation_variance_axes: sigma^2 of each coordinate.
    method: 'cve' or 'mle'.
  """

  diffusion: float
  diffusion_se: float
  localisation_variance: float
  num_displacements: int
  diffusion_axes: tuple = ()
  diffusion_se_axes: tuple = ()
  localisation_variance_axes: tuple = ()
  method: str = "cve"


def track_positions(track: pd.DataFrame, pixel_size_um: float) -> np.ndarray:
  """[last - first + 1, 2] positions in um of one track, NaN rows for frames it skipped."""
  frames = track["frame"].to_numpy()
  out = np.full((frames.max() - frames.min() + 1, 2), np.nan)
  out[frames - frames.min()] = track[["x", "y"]].to_numpy() * pixel_size_um
  return out


def steps(positions):
  """(displacements [n, d], lags [n] in frames) between consecutive finite rows of
  ``positions`` [n_frames, d] (NaN rows: frames without a detection)."""
  positions = np.asarray(positions, np.float64)
  rows = np.flatnonzero(np.all(np.isfinite(positions), axis=1))
  return np.diff(positions[rows], axis=0), np.diff(rows)


def _as_steps(displacements, lags):
  """(displacements [n, d] float64, lags [n] float64), whatever the input's shape."""
  dx = np.asarray(displacements, np.float64)
  return dx.reshape(len(lags), dx.shape[-1] if dx.ndim > 1 else 1), np.asarray(lags, np.float64)


def _per_axis(value, dims: int) -> np.ndarray:
  return np.broadcast_to(np.asarray(value, np.float64), (dims,))


def cve_variance(diffusion, localisation_variance, blur, frame_interval_s, n, dims=2):
  """Vestergaard et al.'s variance of the CVE's D for n displacements in ``dims`` coordinates:
  D^2 [(6 + 4 eps + 2 eps^2)/n + 4 (1 + eps)^2 / n^2] / dims, eps = sigma^2/(D dt) - 2R."""
  d = np.maximum(diffusion, 1e-12)
  blur = np.asarray(blur, np.float64)
  eps = np.maximum(localisation_variance, 0.0) / (d * frame_interval_s) - 2 * blur
  return d**2 * ((6 + 4 * eps + 2 * eps**2) / n + 4 * (1 + eps) ** 2 / n**2) / dims


def cve_steps(
  displacements, lags, frame_interval_s: float, blur, localisation_variance=None
) -> Estimate:
  """Covariance-based estimate of D from one track's displacements, gaps allowed.

  Between detections k frames apart (k > 1 where a blink was bridged), with R and sigma^2
  per coordinate,

      <dx_i^2>        = 2 D dt (k_i - 2R) + 2 sigma^2
      <dx_i dx_{i+1}> = 2 D dt R - sigma^2        (any lags: the two share one position)

  so with S2 = sum dx_i^2 over the n displacements, K = sum k_i and c the mean product of
  the n - 1 adjacent pairs, ``D = (S2 + 2 n c) / (2 dt K)`` and ``sigma^2 = 2 D dt R - c``,
  both unbiased. With every k = 1 this is Vestergaard et al.'s CVE, ``D = <dx^2>/(2 dt) +
  <dx_i dx_{i+1}>/dt``. With sigma^2 known, ``D = (S2 - 2 n sigma^2) / (2 dt (K - 2 n R))``.
  D may come out negative on a short or noisy track: the estimator is unbiased, not
  truncated, so a mean over tracks stays unbiased.

  Args:
    displacements: [n, d].
    lags: [n] frames between the two detections of each displacement (>= 1).
    frame_interval_s: dt.
    blur: R, one value or one per coordinate (``localiser_blur``).
    localisation_variance: known sigma^2 per coordinate (one value or [d]), or None.

  Returns:
    Estimate; NaN where there are fewer than 2 displacements.
  """
  dx, lags = _as_steps(displacements, lags)
  n, dims = dx.shape
  if n < 2:
    nan = (math.nan,) * dims
    return Estimate(math.nan, math.nan, math.nan, n, nan, nan, nan)
  dt = frame_interval_s
  blur = _per_axis(blur, dims)
  s2, total_lag = np.sum(dx**2, axis=0), lags.sum()
  if localisation_variance is None:
    c = np.mean(dx[:-1] * dx[1:], axis=0)
    d_axes = (s2 + 2 * n * c) / (2 * dt * total_lag)
    sigma2 = 2 * d_axes * dt * blur - c
    var = cve_variance(d_axes, sigma2, blur, dt, n, dims=1)
  else:
    sigma2 = _per_axis(localisation_variance, dims).astype(np.float64)
    d_axes = (s2 - 2 * n * sigma2) / (2 * dt * (total_lag - 2 * n * blur))
    # Gaussian displacements correlated at lag 1 only: var(mean dx^2) = 2 (g0^2 + 2 g1^2) / n.
    dpos = np.maximum(d_axes, 0.0)
    g0 = 2 * dpos * dt * (1 - 2 * blur) + 2 * sigma2
    g1 = 2 * dpos * dt * blur - sigma2
    var = 2 * (g0**2 + 2 * g1**2) / n / (2 * (1 - 2 * blur) * dt) ** 2
  return Estimate(
    float(np.mean(d_axes)),
    float(math.sqrt(np.sum(var)) / dims),
    float(np.mean(sigma2)),
    n,
    tuple(float(v) for v in d_axes),
    tuple(float(v) for v in np.sqrt(var)),
    tuple(float(v) for v in sigma2),
  )


def cve(
  positions, frame_interval_s: float, blur, localisation_variance: float | None = None
) -> Estimate:
  """``cve_steps`` of a track given as positions [n_frames, d] (NaN rows for missed frames)."""
  dx, lags = steps(positions)
  return cve_steps(dx, lags, frame_interval_s, blur, localisation_variance)


def _tridiagonal(lags, diffusion, sigma2, blur, dt):
  """Banded (upper) covariance of one coordinate's displacements with these lags."""
  band = np.zeros((2, len(lags)))
  band[1] = 2 * diffusion * dt * (lags - 2 * blur) + 2 * sigma2
  band[0, 1:] = 2 * diffusion * dt * blur - sigma2
  return band


def _neg_log_likelihood(log_params, dx, lags, blur, dt):
  import scipy.linalg

  d = math.exp(log_params[0])
  total = 0.0
  for axis in range(dx.shape[1]):
    band = _tridiagonal(lags, d, math.exp(log_params[1 + axis]), blur[axis], dt)
    try:
      chol = scipy.linalg.cholesky_banded(band)
    except np.linalg.LinAlgError:
      return 1e300
    alpha = scipy.linalg.cho_solve_banded((chol, False), dx[:, axis])
    # -log N(dx; 0, C) up to a constant: dx' C^-1 dx / 2 + log det(C) / 2.
    total += 0.5 * float(dx[:, axis] @ alpha) + float(np.sum(np.log(chol[-1])))
  return total


def mle_steps(displacements, lags, frame_interval_s: float, blur, start: Estimate | None = None):
  """Maximum-likelihood D and sigma^2 per coordinate from one track's displacements.

  The displacements of each coordinate are Gaussian with the tridiagonal covariance of
  blurred, noisy positions (Berglund, Phys. Rev. E 82, 011917, 2010; Michalet and
  Berglund, Phys. Rev. E 85, 061916, 2012): variances ``2 D dt (k_i - 2R) + 2 sigma^2``
  and adjacent covariances ``2 D dt R - sigma^2``. One D is shared by the coordinates;
  each has its own sigma^2 and R. Where sigma^2 / (D dt) is large the CVE's variance grows
  as its square (Vestergaard et al. 2014), and this estimator stays near the Cramer-Rao
  bound. D > 0 here by construction (the covariance must be positive definite), so on a
  track of an immobile QD it is biased up where the CVE is not.

  Args:
    displacements: [n, d]; lags: [n] frames; frame_interval_s: dt; blur: R (one or [d]).
    start: a first guess (the CVE), optional.

  Returns:
    Estimate with method 'mle' (SE: the Cramer-Rao bound at the estimate), or the CVE
    where the fit fails.
  """
  import scipy.optimize

  dx, lags = _as_steps(displacements, lags)
  n, dims = dx.shape
  start = start or cve_steps(dx, lags, frame_interval_s, blur)
  if n < 3:
    return start
  dt = frame_interval_s
  blur = _per_axis(blur, dims)
  scale = float(np.mean(dx**2 / lags[:, None])) / 2  # ~ D dt + sigma^2, a step's size
  d0 = start.diffusion if np.isfinite(start.diffusion) and start.diffusion > 0 else scale / dt / 2
  s0 = [
    v if np.isfinite(v) and v > 0 else scale / 2
    for v in (start.localisation_variance_axes or (math.nan,) * dims)
  ]
  x0 = np.log(np.maximum([d0, *s0], 1e-12 * max(scale, 1e-30)))
  fit = scipy.optimize.minimize(
    _neg_log_likelihood,
    x0,
    args=(dx, lags, blur, dt),
    method="Nelder-Mead",
    options={"xatol": 1e-4, "fatol": 1e-6, "maxiter": 2000},
  )
  if not np.isfinite(fit.fun) or fit.fun >= 1e299:
    return start
  d = float(math.exp(fit.x[0]))
  sigma2 = np.exp(fit.x[1:])
  # The MLE's asymptotic SE: the Cramer-Rao bound at the estimate (gaps read as n + 1 frames).
  se = cramer_rao_diffusion(n + 1, d, float(np.mean(sigma2)), float(np.mean(blur)), dt, dims)
  return Estimate(
    d,
    se,
    float(np.mean(sigma2)),
    n,
    start.diffusion_axes,
    start.diffusion_se_axes,
    tuple(float(v) for v in sigma2),
    "mle",
  )


# Vestergaard et al. (2014): the CVE is near the Cramer-Rao bound while the reduced
# localisation error x = sigma^2 / (D dt) - 2R stays below about 1; beyond it, its variance
# grows as x^2 and the maximum-likelihood estimator is the better one.
MLE_ABOVE_X = 1.0


def reduced_localisation_error(diffusion, localisation_variance, frame_interval_s, blur):
  """x = sigma^2 / (D dt) - 2R (infinite where D <= 0): the CVE's precision parameter."""
  if not diffusion > 0:
    return math.inf
  return localisation_variance / (diffusion * frame_interval_s) - 2 * float(np.mean(blur))


def msd_fit(lag_s, msd, dims: int = 2) -> float:
  """Naive D: least-squares line MSD = 2 dims D t through the origin (no blur, no noise).

  Args:
    lag_s: [m] lag times.
    msd: [m] mean squared displacements (summed over ``dims`` coordinates).
  """
  lag_s, msd = np.asarray(lag_s, np.float64), np.asarray(msd, np.float64)
  keep = np.isfinite(msd)
  if not keep.any():
    return math.nan
  return float(np.sum(msd[keep] * lag_s[keep]) / np.sum(lag_s[keep] ** 2) / (2 * dims))


def expected_msd(lag_s, diffusion, localisation_variance, blur, frame_interval_s, dims=2):
  """<|r(t+lag) - r(t)|^2> of blurred, noisy positions: 2 dims (D lag - 2 R D dt + sigma^2)."""
  lag_s = np.asarray(lag_s, np.float64)
  per_coord = diffusion * lag_s - 2 * blur * diffusion * frame_interval_s + localisation_variance
  return 2 * dims * per_coord


def displacement_covariance(n, diffusion, localisation_variance, blur, frame_interval_s):
  """[n, n] covariance of n consecutive displacements of one coordinate (tridiagonal)."""
  g0 = 2 * diffusion * frame_interval_s * (1 - 2 * blur) + 2 * localisation_variance
  g1 = 2 * diffusion * frame_interval_s * blur - localisation_variance
  return g0 * np.eye(n) + g1 * (np.eye(n, k=1) + np.eye(n, k=-1))


def cramer_rao_diffusion(
  n_frames: int, diffusion, localisation_variance, blur, frame_interval_s, dims: int = 2
) -> float:
  """Cramer-Rao bound on the standard deviation of any unbiased D from one track.

  The displacements of each coordinate are Gaussian with the tridiagonal covariance of
  ``displacement_covariance``; D and sigma^2 are both unknown, so the bound is the D entry
  of the inverse 2x2 Fisher matrix (Vestergaard et al. 2014; Michalet and Berglund 2012
  for the same bound without blur).
  """
  n = n_frames - 1
  if n < 2:
    return math.nan
  cov = displacement_covariance(n, diffusion, localisation_variance, blur, frame_interval_s)
  inv = np.linalg.inv(cov)
  d_diff = displacement_covariance(n, 1.0, 0.0, blur, frame_interval_s)
  d_sigma = displacement_covariance(n, 0.0, 1.0, blur, frame_interval_s)
  a, b = inv @ d_diff, inv @ d_sigma
  fisher = (
    0.5 * dims * np.array([[np.sum(a * a.T), np.sum(a * b.T)], [np.sum(b * a.T), np.sum(b * b.T)]])
  )
  return float(math.sqrt(np.linalg.inv(fisher)[0, 0]))


# --- selection by the field's edge ------------------------------------------------------------


def inclusion_weight(low, high, lower, upper):
  """Horvitz-Thompson weights of windows of paths seen inside the box [lower, upper].

  A particle placed uniformly at random (a stationary, uniform density of particles) shows
  a window of its path inside the box only if the whole window fits: the path's shape is
  independent of where it starts, so the chance is proportional to
  prod_c (L_c - range_c), L_c the box's side and range_c = max - min of the window's
  coordinate c. Windows that wander far are seen less often; weighting each by the inverse
  of that chance, ``1 / prod_c (L_c - range_c)``, makes a weighted mean over the windows seen
  an unbiased (ratio) estimate of the mean over all windows (docs/diffusion.md, section 5).

  Args:
    low, high: [..., d] each window's smallest and largest coordinates.
    lower, upper: [d] the box.

  Returns:
    [...] weights, in 1 / units^d; 0 for a window that does not lie inside the box.
  """
  low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
  lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
  room = (upper - lower) - (high - low)
  inside = np.all((low >= lower) & (high <= upper) & (room > 0), axis=-1)
  return np.where(inside, 1.0 / np.prod(np.where(room > 0, room, 1.0), axis=-1), 0.0)


def weighted_mean(values, weights) -> tuple[float, float]:
  """(sum w v / sum w, its standard error) for independent units: the ratio (Hajek) mean of
  a Horvitz-Thompson design and its linearised SE, sqrt(sum w^2 (v - mean)^2) / sum w.
  Non-finite values and zero weights are left out; (NaN, NaN) if nothing is left."""
  values, weights = np.asarray(values, np.float64), np.asarray(weights, np.float64)
  keep = np.isfinite(values) & np.isfinite(weights) & (weights > 0)
  values, weights = values[keep], weights[keep]
  if len(values) == 0:
    return math.nan, math.nan
  total = weights.sum()
  mean = float(np.sum(weights * values) / total)
  return mean, float(np.sqrt(np.sum(weights**2 * (values - mean) ** 2)) / total)
