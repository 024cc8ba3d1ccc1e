"""Heterogeneous motion: how each track moves, and the populations of D over tracks.

Two questions a microscopist asks of a movie of QDs in tissue, once each track has a D
(``qdjax.tracks.tracking``):

- **How does this QD move?** (``classify``) Free diffusion has an MSD that grows linearly
  at every lag; a confined QD's MSD levels off at a plateau set by the size of its cage; a
  directed (carried) one's grows as v^2 t^2 on top; an immobile one's does not grow. The
  statistic is the ratio of a long-lag to the short-lag D, ``rho = D_long / D_short``:
  D_short is the track's CVE (lags 0-1, blur and noise corrected), D_long the MSD's slope
  between lags L/2 and L (the noise offset cancels in the difference). rho is 1 for free
  diffusion whatever the noise, below 1 when confined and above when directed. Its null
  distribution is simulated for each track (a parametric bootstrap: free tracks with the
  track's own D, sigma^2, blur, length and gaps), so the test is exact for the track's
  length and needs no table. Each track also gets its MSD exponent alpha (a log-log fit of
  the noise-corrected MSD), a confinement radius from the plateau (for a reflecting sphere
  of radius a, the plateau of the 2D MSD is 4 a^2 / 5, plus 4 sigma^2 of the movie's
  localisation error) and a speed (the net displacement
  over the track's duration), with bootstrap standard errors.
- **Which populations are there?** (``fit_populations``) The per-track D_i are estimates
  with known error: given a population's D_k, track i's CVE has variance
  ``cve_variance(D_k, sigma_i^2, R, dt, n_i)`` (Vestergaard et al. 2014). A mixture of
  normal components with those variances, fitted by EM, deconvolves the spread the
  estimation adds: each population's D and its share of tracks, with 1 to ``max_k``
  populations chosen by BIC. An optional component fixed at D = 0 is the immobile
  fraction.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from qdjax.tracks import diffusion

CLASS_COLUMNS = [
  "particle",
  "motion",
  "rho",
  "rho_p_value",
  "speed_p_value",
  "alpha",
  "alpha_se",
  "confinement_radius_um",
  "speed_um_s",
  "speed_se_um_s",
]
# A track is called confined or directed when free diffusion is rejected at this level.
ALPHA_LEVEL = 0.01


def _statistics(positions, dt: float, blur, max_lag: int) -> dict:
  """Per track of a batch [B, n, 2] sharing one pattern of missed frames (NaN rows):
  {'rho', 'alpha', 'plateau' (mean MSD over lags L/2..L, um^2), 'speed' um/s, 'diffusion',
  'diffusion_se', 'sigma2'}, each [B]."""
  positions = np.asarray(positions, np.float64)
  present = np.all(np.isfinite(positions[0]), axis=1)
  rows = np.flatnonzero(present)
  blur_mean = float(np.mean(blur))
  # The CVE with gaps (``diffusion.cve_steps``), vectorised over the batch, x and y pooled.
  dx = np.diff(positions[:, rows], axis=1)
  lags = np.diff(rows).astype(np.float64)
  n = dx.shape[1]
  s2 = np.sum(dx**2, axis=1)  # [B, 2]
  c = np.mean(dx[:, :-1] * dx[:, 1:], axis=1)
  d_axes = (s2 + 2 * n * c) / (2 * dt * lags.sum())
  sigma2_axes = 2 * d_axes * dt * np.asarray(blur, np.float64) - c
  d_short, sigma2 = d_axes.mean(axis=1), sigma2_axes.mean(axis=1)
  se = np.sqrt(np.sum(diffusion.cve_variance(d_axes, sigma2_axes, blur, dt, n, dims=1), axis=1)) / 2
  # Time-averaged MSD (x + y) per lag.
  msd = np.full((len(positions), max_lag), np.nan)
  for lag in range(1, max_lag + 1):
    both = present[lag:] & present[:-lag]
    if both.any():
      d = positions[:, lag:][:, both] - positions[:, :-lag][:, both]
      msd[:, lag - 1] = np.mean(np.sum(d**2, axis=2), axis=1)
  half = max_lag // 2
  d_long = (msd[:, max_lag - 1] - msd[:, half - 1]) / (4 * (max_lag - half) * dt)
  rho = np.where(d_short > 0, d_long / np.where(d_short > 0, d_short, 1.0), np.nan)
  # The MSD exponent of the MSD without its offset 4 (sigma^2 - 2 R D dt).
  offset = 4 * (sigma2 - 2 * blur_mean * d_short * dt)
  corrected = msd - offset[:, None]
  x = np.log(np.arange(1, max_lag + 1) * dt)[None, :]
  ok = np.isfinite(corrected) & (corrected > 0)
  y = np.log(np.where(ok, corrected, 1.0))
  m = ok.sum(axis=1)
  sx, sy = np.sum(ok * x, axis=1), np.sum(ok * y, axis=1)
  sxx, sxy = np.sum(ok * x * x, axis=1), np.sum(ok * x * y, axis=1)
  denominator = m * sxx - sx**2
  alpha = np.where((m >= 3) & (denominator > 0), (m * sxy - sx * sy) / np.where(
    denominator > 0, denominator, 1.0), np.nan)  # fmt: skip
  plateau = np.nanmean(msd[:, half - 1 :], axis=1)
  duration = (rows[-1] - rows[0]) * dt
  speed = np.linalg.norm(positions[:, rows[-1]] - positions[:, rows[0]], axis=1) / duration
  return {
    "rho": rho,
    "alpha": alpha,
    "plateau": plateau,
    "speed": speed,
    "diffusion": d_short,
    "diffusion_se": se,
    "sigma2": sigma2,
  }


def _simulate_free(rng, num: int, n_frames: int, present, d: float, sigma2: float, blur, dt):
  """[num, n_frames, 2] free tracks with the given D, sigma^2 and per-axis R, NaN where the
  original track has no detection. Point samples of the path plus noise of variance
  ``sigma^2 - 2 R D dt`` have exactly the displacement moments of blurred, noisy positions
  (section 1 of docs/diffusion.md: ``2 D dt (1 - 2R) + 2 sigma^2`` and ``2 D dt R - sigma^2``),
  which is all the statistics here depend on to second order."""
  blur = np.broadcast_to(np.asarray(blur, np.float64), (2,))
  d = max(d, 0.0)
  steps = rng.normal(0, math.sqrt(2 * d * dt), (num, n_frames, 2))
  path = np.cumsum(steps, axis=1)
  noise = np.sqrt(np.maximum(sigma2 - 2 * blur * d * dt, 0.0))
  out = path + rng.normal(size=path.shape) * noise
  out[:, ~present] = np.nan
  return out


def classify(
  tracks: pd.DataFrame,
  analysis,
  *,
  max_lag: int | None = None,
  bootstrap: int = 1000,
  level: float = ALPHA_LEVEL,
  seed: int = 0,
) -> pd.DataFrame:
  """Per track: free, confined, directed or immobile, with the statistics behind it.

  Args:
    tracks: frame, x, y, particle (px), tracks of >= 8 frames (shorter ones are skipped).
    analysis: ``qdjax.tracks.tracking.Analysis`` (frame interval, pixel size, blur).
    max_lag: the long lag L (default: a quarter of each track's span, 4 to 20 frames).
    bootstrap: free tracks simulated per track for the null distribution of rho.
    level: free diffusion is rejected when rho's two-sided bootstrap p-value is below it.
    seed: of the bootstrap.

  Returns:
    DataFrame with ``CLASS_COLUMNS``. ``motion``: 'immobile' when the track is still (its
    short-lag D within 2 standard errors of 0, and D + 2 SE times dt below its own sigma^2,
    so that a short track is not called still for want of precision) and its spread is
    within twice the movie's localisation error (the median sigma over the tracks that
    move); 'confined' when rho rejects free
    diffusion below 1, or when the track is still but spread wider than that (a cage it
    explores within one frame looks like noise to the CVE); 'directed' when rho rejects it
    above 1, or when the net displacement is beyond what free diffusion gives
    (``speed_p_value``, one-sided); else 'free'. alpha_se and speed_se are the spreads of the same
    statistics over the simulated free tracks (the uncertainty under free diffusion).
  """
  rng = np.random.default_rng(seed)
  dt, a = analysis.frame_interval_s, analysis.pixel_size_um
  rows = []
  for particle, one in tracks.groupby("particle", sort=True):
    positions = diffusion.track_positions(one, a)
    span = len(positions)
    if span < 8 or len(one) < 5:
      continue
    lag = max_lag or int(np.clip(span // 4, 4, 20))
    lag = min(lag, span - 1)
    seen = {k: float(v[0]) for k, v in _statistics(positions[None], dt, analysis.blur, lag).items()}
    present = np.all(np.isfinite(positions), axis=1)
    sims = _simulate_free(
      rng, bootstrap, span, present, max(seen["diffusion"], 1e-12), seen["sigma2"],
      analysis.blur, dt,
    )  # fmt: skip
    null = _statistics(sims, dt, analysis.blur, lag)
    null_rho = null["rho"][np.isfinite(null["rho"])]
    rho = seen["rho"]
    if np.isfinite(rho) and len(null_rho):
      below = (np.sum(null_rho <= rho) + 1) / (len(null_rho) + 1)
      above = (np.sum(null_rho >= rho) + 1) / (len(null_rho) + 1)
      p = min(1.0, 2 * min(below, above))
    else:
      p = math.nan
    # A carried QD also goes further than diffusion takes it: the net displacement's p.
    p_speed = (np.sum(null["speed"] >= seen["speed"]) + 1) / (len(null["speed"]) + 1)
    if rho < 1 or not np.isfinite(rho):
      p_speed = 1.0
    rows.append((int(particle), seen, min(p, 1.0) if np.isfinite(p) else p, p_speed, null))
  # The movie's localisation error: the median sigma^2 of the tracks that move freely
  # (their sigma^2 is the localiser's; a cage would inflate it); of all tracks if none does.
  free_like = [
    seen["sigma2"]
    for _, seen, p, p_speed, _ in rows
    if seen["diffusion"] > 2 * seen["diffusion_se"] and not (p < level or p_speed < level)
  ]
  noise = max(float(np.median(free_like or [r[1]["sigma2"] for r in rows] or [0.0])), 0.0)
  out = []
  for particle, seen, p, p_speed, null in rows:
    # Still: no motion resolved (D within 2 SE of 0), and not merely too short to tell (the
    # upper bound on D dt is below the track's own spread sigma^2).
    upper = seen["diffusion"] + 2 * seen["diffusion_se"]
    still = not seen["diffusion"] > 2 * seen["diffusion_se"] and upper * dt < seen["sigma2"]
    if still and seen["sigma2"] <= 4 * noise:
      motion = "immobile"  # no motion beyond the movie's localisation error
    elif still or (np.isfinite(p) and p < level and seen["rho"] < 1):
      # Still, but spread far beyond the localisation error: a cage explored within a frame.
      motion = "confined"
    elif (np.isfinite(p) and p < level) or p_speed < level:
      motion = "directed"
    else:
      motion = "free"
    # A reflecting sphere of radius a: the 2D MSD levels off at 4 a^2 / 5, plus the noise.
    cage = seen["plateau"] - 4 * noise
    radius = math.sqrt(max(cage, 0.0) * 5 / 4) if motion == "confined" else math.nan
    out.append(
      (
        particle,
        motion,
        seen["rho"],
        p,
        p_speed,
        seen["alpha"],
        float(np.nanstd(null["alpha"])),
        radius,
        seen["speed"],
        float(np.nanstd(null["speed"])),
      )
    )
  return pd.DataFrame(out, columns=CLASS_COLUMNS)


@dataclasses.dataclass(frozen=True)
class Populations:
  """A mixture of D populations fitted to per-track estimates.

  Attributes:
    diffusion: [K] each population's D, um^2/s (0 for the immobile one).
    diffusion_se: [K] their standard errors (observed information).
    fractions: [K] shares of tracks.
    immobile: whether the first population is the one fixed at D = 0.
    bic: of the chosen K; ``by_k``: {K: BIC} of every K tried.
    responsibilities: [tracks, K] each track's posterior membership.
  """

  diffusion: np.ndarray
  diffusion_se: np.ndarray
  fractions: np.ndarray
  immobile: bool
  bic: float
  by_k: dict
  responsibilities: np.ndarray

  def table(self) -> pd.DataFrame:
    return pd.DataFrame(
      {
        "population": np.arange(len(self.diffusion)),
        "D_um2_s": self.diffusion,
        "D_se_um2_s": self.diffusion_se,
        "fraction": self.fractions,
      }
    )


def _variances(means, sigma2, n, blur: float, dt: float):
  """[tracks, K] the CVE's variance for each track under each population's D."""
  means = np.maximum(np.asarray(means, np.float64), 1e-9)[None, :]
  return diffusion.cve_variance(means, sigma2[:, None], blur, dt, n[:, None], dims=2)


def _fit_k(d, sigma2, n, blur, dt, k, immobile, iterations=300):
  """EM for k free components (plus one fixed at D = 0 when ``immobile``)."""
  free_k = k - int(immobile)
  qs = (np.arange(free_k) + 0.5) / max(free_k, 1)
  means = np.quantile(d, qs) if free_k else np.zeros(0)
  means = np.maximum(means, 1e-3 * max(np.median(np.abs(d)), 1e-9))
  weights = np.full(k, 1.0 / k)
  for _ in range(iterations):
    full = np.concatenate([[0.0], means]) if immobile else means
    var = _variances(full, sigma2, n, blur, dt)
    logp = -0.5 * (d[:, None] - full[None]) ** 2 / var - 0.5 * np.log(2 * np.pi * var)
    logp += np.log(np.maximum(weights, 1e-300))[None]
    top = logp.max(axis=1, keepdims=True)
    resp = np.exp(logp - top)
    resp /= resp.sum(axis=1, keepdims=True)
    weights = resp.mean(axis=0)
    free_resp = resp[:, int(immobile) :]
    w = free_resp / var[:, int(immobile) :]
    new = np.sum(w * d[:, None], axis=0) / np.maximum(np.sum(w, axis=0), 1e-300)
    new = np.maximum(new, 1e-6)
    if np.allclose(new, means, rtol=1e-7, atol=1e-12):
      means = new
      break
    means = new
  full = np.concatenate([[0.0], means]) if immobile else means
  var = _variances(full, sigma2, n, blur, dt)
  dens = np.exp(-0.5 * (d[:, None] - full[None]) ** 2 / var) / np.sqrt(2 * np.pi * var)
  loglik = float(np.sum(np.log(np.maximum(dens @ weights, 1e-300))))
  params = free_k + (k - 1)  # the free means and the weights
  bic = -2 * loglik + params * math.log(len(d))
  info = np.sum(resp[:, int(immobile) :] / var[:, int(immobile) :], axis=0)
  se = 1 / np.sqrt(np.maximum(info, 1e-300))
  order = np.argsort(means)
  if immobile:
    full_order = np.concatenate([[0], 1 + order])
    se_full = np.concatenate([[0.0], se[order]])
  else:
    full_order, se_full = order, se[order]
  return full[full_order], se_full, weights[full_order], bic, resp[:, full_order]


def fit_populations(
  table: pd.DataFrame,
  analysis,
  *,
  max_k: int = 3,
  immobile: bool | None = None,
) -> Populations:
  """Deconvolved D populations of a movie's tracks (module docstring).

  Args:
    table: per-track D (``tracking.estimate``): D_um2_s, n_detections, sigma_x_um, sigma_y_um.
    analysis: ``tracking.Analysis`` of the tracks (frame interval, blur).
    max_k: most free populations tried.
    immobile: add a population fixed at D = 0: None tries both and keeps the lower BIC.

  Raises:
    ValueError: fewer than 5 tracks with a finite D.
  """
  ok = table[np.isfinite(table["D_um2_s"])]
  if len(ok) < 5:
    raise ValueError(f"need at least 5 tracks with a finite D to fit populations, got {len(ok)}")
  d = ok["D_um2_s"].to_numpy(np.float64)
  sigma2 = ((ok["sigma_x_um"] ** 2 + ok["sigma_y_um"] ** 2) / 2).to_numpy(np.float64)
  n = (ok["n_detections"] - 1).to_numpy(np.float64)
  blur, dt = analysis.mean_blur, analysis.frame_interval_s
  best, by_k = None, {}
  for with_zero in [False, True] if immobile is None else [immobile]:
    for k in range(1, max_k + 1):
      fit = _fit_k(d, sigma2, n, blur, dt, k + int(with_zero), with_zero)
      key = f"{k}{'+immobile' if with_zero else ''}"
      by_k[key] = fit[3]
      if best is None or fit[3] < best[0][3]:
        best = (fit, with_zero)
  (means, se, weights, bic, resp), with_zero = best
  return Populations(means, se, weights, with_zero, bic, by_k, resp)
