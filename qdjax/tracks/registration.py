"""Tissue motion read from the movie itself, and taken out of the detections.

In vivo the sample moves while the beam scans it (breathing, heartbeat, slow drift): every
line is recorded where the tissue was at that line's time, so a frame is sheared line by
line and every QD's track carries the tissue's motion on top of its own. The tissue's
autofluorescent texture moves with it, so the motion can be read from the background:

1. a reference image of the tissue is the movie's mean, smoothed, starting from the frame
   most like the others (``_most_typical``);
2. each strip of ``strip_lines`` consecutive lines (about 10 ms of a 96-line frame) is
   registered to the reference by maximum likelihood: the strip's counts are Poisson with
   means the reference shifted by s, and the log-likelihood of every integer shift
   ``|s| <= max_shift_px`` is one FFT cross-correlation; a parabola through the best shift
   and its neighbours gives the subpixel shift and, from its curvature, the shift's
   precision;
3. the reference is rebuilt from the frames with the estimated motion taken out (each line
   put back where the tissue was), and the strips registered again (coarse strips, then
   fine ones near them), until the shifts change by less than ``CONVERGED_PX``: a few
   times, more where the tissue's z motion shows frames planes of the texture unlike the
   one the reference started from;
4. the way the texture changes with depth (``_depth_modes``: the leading principal
   component of the frames' differences from the reference, each line put back) is fitted
   per strip beside its shift, and the reference rebuilt with it ``DEPTH_ITERATIONS``
   times.

The estimate is a displacement (x, y) in px per strip, relative to the reference, at the
strip's middle time. A detection at (x, y) in frame f was recorded at
``f * frame_interval + y * line_period + x * dwell``; its corrected position is
(x, y) minus the displacement interpolated at that time. The tissue's z position is not
estimated, and detections are not corrected for it.

Whether to correct is read from the movie too: the left and right halves of the frame,
registered apart, see the same tissue motion at the same times, while the noise of a
plain background, or a QD the mask missed, moves each on its own. The motion is corrected
when the halves' changes from strip to strip correlate (``halves_agree``, one-sided at
``ALPHA``) and the motion they share exceeds the noise of their mean
(``MIN_SIGNAL_TO_NOISE``). Where the registration with the depth component fails that
test, the one without it (step 3's reference) is tested at half the level and used if it
passes: fitted at every shift, the component can let a wrong shift fit better. The linked
tracks then check the trace's scale per axis (``TissueMotion.scaled``,
``tracking.tissue_gain``). Details and measured figures in docs/diffusion.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from qdjax import io

STRIP_LINES = 8  # lines registered together
ALPHA = 1e-3  # significance of the motion test
MIN_SIGNAL_TO_NOISE = 1.0  # corrected only where the shared motion exceeds its noise
REFERENCE_FRAMES = 200  # frames (evenly spread) that build the reference
CLIP_QUANTILE = 0.995  # counts above this quantile (QDs) are clipped before registering
MIN_SHIFT_PX = 4  # search at least this far
MAX_SHIFT_UM = 6.0  # and at most this far (or a quarter of the frame): a few um of breathing
MAX_ITERATIONS = 12  # reference rebuilds, at most
CONVERGED_PX = 0.1  # rebuilt until the line shifts change by less than this, rms
DEPTH_MODES = 1  # ways the texture changes with depth, fitted per strip beside its shift
DEPTH_ITERATIONS = 2  # reference rebuilds with them
DEPTH_FRAMES = 64  # frames (evenly spread over the sample) that give them
COARSE_STRIPS = 4  # strips per frame of the first, wide search
FINE_REACH_PX = 4  # fine strips search this far from the coarse estimate


@dataclasses.dataclass(frozen=True)
class Timing:
  """When each pixel was recorded: ``frame * frame_interval_s + line * line_period_s +
  column * dwell_s``."""

  frame_interval_s: float
  line_period_s: float
  dwell_s: float

  def times(self, frame, x, y):
    """Seconds from the movie's start at which (x, y) px of ``frame`` was recorded."""
    frame, x, y = (np.asarray(v, np.float64) for v in (frame, x, y))
    return frame * self.frame_interval_s + y * self.line_period_s + x * self.dwell_s


def timing_for(preset, height: int, width: int, frame_interval_s=None) -> Timing:
  """The scan timing of a ``height x width`` movie recorded with ``preset``."""
  from qdjax.sim import movie, scan

  params = preset.sim_params(height=height, width=width)
  line = float(scan.line_period(width, float(params.dwell_s), float(params.retrace_s)))
  if frame_interval_s is None:
    frame_interval_s = movie.default_frame_interval(params)
  return Timing(float(frame_interval_s), line, float(params.dwell_s))


@dataclasses.dataclass(frozen=True)
class TissueMotion:
  """The tissue's displacement estimated from the movie.

  Attributes:
    frame, line: [n] the frame and middle line of each registered strip.
    time_s: [n] its middle time, s from the movie's start.
    shift_px: [n, 2] displacement (x, y) of the tissue relative to the reference, px.
    se_px: [n, 2] each shift's standard error from the likelihood's curvature (Poisson
      counts; for detector units other than photons, a scale off).
    noise_px: [2] the noise of a coarse strip's shift, from the frame's two halves
      registered apart (sd(left - right) / 2), px.
    rms_px: [2] the trace's spread about its mean, px.
    p_value: the test of no motion (smooth trace against independent noise).
    applied: whether the detections are corrected.
    reason: why it is or is not applied, in words.
    timing: the scan's timing (when each pixel was recorded).
    gain: [2] the factor the registered trace was scaled by, per axis, so that the tracked
      QDs' steps do not follow it (``scaled``; 1 where it was not).
  """

  frame: np.ndarray
  line: np.ndarray
  time_s: np.ndarray
  shift_px: np.ndarray
  se_px: np.ndarray
  noise_px: np.ndarray
  rms_px: np.ndarray
  p_value: float
  applied: bool
  reason: str
  timing: Timing
  gain: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(2))

  def scaled(self, gain) -> TissueMotion:
    """The motion with its displacement scaled by ``gain`` ([2], x and y) about its
    reference, as a calibration of the registration by the tracked QDs (their steps in the
    tissue's frame do not follow the tissue, ``tracking.tissue_gain``)."""
    gain = np.asarray(gain, np.float64)
    return dataclasses.replace(
      self,
      shift_px=self.shift_px * gain,
      se_px=self.se_px * gain,
      rms_px=self.rms_px * gain,
      gain=self.gain * gain,
    )

  def at(self, time_s) -> np.ndarray:
    """[k, 2] displacement (x, y) px at the given times, linear between strips."""
    time_s = np.asarray(time_s, np.float64)
    return np.stack([np.interp(time_s, self.time_s, self.shift_px[:, i]) for i in (0, 1)], -1)

  def table(self, pixel_size_um: float | None = None) -> pd.DataFrame:
    """One row per strip: frame, line, time_s, dx_px, dy_px, their SEs (and in um)."""
    out = pd.DataFrame(
      {
        "frame": self.frame,
        "line": self.line,
        "time_s": self.time_s,
        "dx_px": self.shift_px[:, 0],
        "dy_px": self.shift_px[:, 1],
        "dx_se_px": self.se_px[:, 0],
        "dy_se_px": self.se_px[:, 1],
      }
    )
    if pixel_size_um is not None:
      out["dx_um"] = out["dx_px"] * pixel_size_um
      out["dy_um"] = out["dy_px"] * pixel_size_um
    return out

  def summary(self) -> dict:
    return {
      "applied": self.applied,
      "p_value": self.p_value,
      "rms_px": [float(v) for v in self.rms_px],
      "noise_px": [float(v) for v in self.noise_px],
      "strips": len(self.time_s),
      "gain": [float(v) for v in self.gain],
      "reason": self.reason,
    }


# --- the registration kernel -------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("lines", "reach", "pad"))
def strip_shifts(frames, valid, reference, prior, *, lines: int, reach: int, pad: int, modes=None):
  """Maximum-likelihood shift of every strip of ``lines`` lines against ``reference``.

  The counts I of a strip are Poisson with means R(p - s), the reference shifted by s;
  up to terms free of s the log-likelihood is sum_p I(p) log(R(p - s)/Rbar) -
  (R(p - s) - Rbar), with both terms 0 where p - s leaves the reference (no information
  there), evaluated for every integer s within ``reach`` of the strip's ``prior`` by one
  FFT cross-correlation per strip.

  Args:
    frames: [n, h, w] counts (clipped).
    valid: [n, h, w] 1 where a pixel is background, 0 where it is left out (QDs).
    reference: [h + 2 pad, w + 2 pad] positive expected counts of the tissue, on a
      canvas ``pad`` px wider than the frame on every side (tissue the motion brings into
      view).
    prior: [n, S, 2] integer (x, y) px around which each strip is searched, |prior| <=
      pad; None: around 0.
    lines: lines per strip (the last strip may be shorter).
    reach: largest |shift - prior| searched per axis, px.
    pad: the reference's margin.
    modes: [K, h + 2 pad, w + 2 pad] ways M_k the tissue's image may differ from
      ``reference`` (its texture at other depths): the strip's means are then
      ``R + sum_k a_k M_k``, with a ~ N(0, 1) per strip and shift, profiled out by one
      Newton step from a = 0 (all zeros: the likelihood without them). None: R alone.

  Returns:
    (shift [n, S, 2] (x, y) px, se [n, S, 2] px).
  """
  n, h, w = frames.shape
  strips = -(-h // lines)
  hp = strips * lines
  mean = jnp.mean(reference[pad : pad + h, pad : pad + w])
  # log(R / Rbar) and R - Rbar, zero beyond the canvas and on the padded rows below it.
  margin = ((reach, hp - h + reach), (reach, reach))
  g = jnp.pad(jnp.log(jnp.maximum(reference, 0.05 * mean) / mean), margin)
  e = jnp.pad(reference - mean, margin)
  size = (lines + 2 * reach, w + 2 * reach)
  fixed = prior is None  # the same crops for every frame: transformed once
  prior = jnp.zeros((n, strips, 2), jnp.int32) if fixed else prior.astype(jnp.int32)
  prior = jnp.clip(prior, -pad, pad)

  def crop(image, row, offset):
    # B(q) = R(row * lines + q_y - reach - offset_y, q_x - reach - offset_x) in frame
    # coordinates, so that sum_p A(p) B(p - s) compares the strip with R moved by offset + s.
    start = (row * lines + pad - offset[1], pad - offset[0])
    return jax.lax.dynamic_slice(image, start, size)

  rows = jnp.arange(strips)
  if fixed:
    per_strip = jax.vmap(crop, (None, 0, 0))
    g_crops, e_crops = per_strip(g, rows, prior[0]), per_strip(e, rows, prior[0])
  else:
    per_strip = jax.vmap(jax.vmap(crop, (None, 0, 0)), (None, None, 0))
    g_crops, e_crops = per_strip(g, rows, prior), per_strip(e, rows, prior)

  def placed(strip):  # [n, S, lines, w] -> [n, S, size] with the strip at (reach, reach)
    return jnp.pad(strip, [(0, 0), (0, 0), (reach, reach), (reach, reach)])

  strip_of = lambda a: jnp.pad(a, ((0, 0), (0, hp - h), (0, 0))).reshape(n, strips, lines, w)
  valid = strip_of(valid)
  data = strip_of(frames) * valid
  # sum_p a(p) b(p - s) = irfft(rfft(a) conj(rfft(b)))(s): circular, with no wrap for
  # |s| <= reach; both terms share one inverse transform.
  data_spectrum = jnp.fft.rfft2(placed(data))
  valid_spectrum = jnp.fft.rfft2(placed(valid))
  spectrum = data_spectrum * jnp.conj(jnp.fft.rfft2(g_crops)) - valid_spectrum * jnp.conj(
    jnp.fft.rfft2(e_crops)
  )
  if modes is not None:
    # The reference plus a_k M_k, with a fitted per strip and shift: one Newton step from
    # a = 0 adds g^T H^-1 g / 2, g_k = sum I M_k / R - sum valid M_k, H_kl = sum I M_k M_l /
    # R^2 (+ 1, a unit normal prior on a), each a cross-correlation like the terms above.
    floor = jnp.maximum(reference, 0.05 * mean)
    ratio = [jnp.pad(m / floor, margin) for m in modes]
    plain = [jnp.pad(m, margin) for m in modes]

    def corr(*pairs):  # sum over (spectrum, image) pairs of their cross-correlations
      total = 0.0
      for spectrum_, image in pairs:
        crops = per_strip(image, rows, prior[0]) if fixed else per_strip(image, rows, prior)
        total = total + spectrum_ * jnp.conj(jnp.fft.rfft2(crops))
      out = jnp.fft.irfft2(total, s=size)
      return jnp.roll(out, (reach, reach), axis=(-2, -1))[..., : 2 * reach + 1, : 2 * reach + 1]

    k_modes = len(modes)
    grad = jnp.stack(
      [corr((data_spectrum, ratio[k]), (-valid_spectrum, plain[k])) for k in range(k_modes)], -1
    )
    hess = jnp.stack(
      [
        jnp.stack([corr((data_spectrum, ratio[k] * ratio[j])) for j in range(k_modes)], -1)
        for k in range(k_modes)
      ],
      -2,
    ) + jnp.eye(k_modes)
    if k_modes == 1:
      gain = 0.5 * grad[..., 0] ** 2 / hess[..., 0, 0]
    else:
      gain = 0.5 * jnp.sum(grad * jnp.linalg.solve(hess, grad[..., None])[..., 0], -1)
  loglik = jnp.fft.irfft2(spectrum, s=size)
  # Shifts -reach..reach along each axis, in order.
  loglik = jnp.roll(loglik, (reach, reach), axis=(-2, -1))[..., : 2 * reach + 1, : 2 * reach + 1]
  if modes is not None:
    loglik = loglik + gain
  k = 2 * reach + 1
  flat = loglik.reshape(n, strips, k * k)
  best = jnp.argmax(flat, axis=-1)
  by, bx = best // k, best % k
  # Parabola through the best and its neighbours, per axis (none at the search's edge).
  by_c, bx_c = jnp.clip(by, 1, k - 2), jnp.clip(bx, 1, k - 2)

  def value(yy, xx):
    return jnp.take_along_axis(flat, (yy * k + xx)[..., None], axis=-1)[..., 0]

  def vertex(minus, centre, plus, inside):
    curvature = minus - 2 * centre + plus
    ok = inside & (curvature < 0)
    safe = jnp.where(ok, curvature, -1.0)
    offset = jnp.where(ok, 0.5 * (minus - plus) / safe, 0.0)
    se = jnp.where(ok, 1 / jnp.sqrt(-safe), jnp.inf)
    return jnp.clip(offset, -0.5, 0.5), se

  ox, sx = vertex(value(by, bx_c - 1), value(by, bx_c), value(by, bx_c + 1), bx == bx_c)
  oy, sy = vertex(value(by_c - 1, bx), value(by_c, bx), value(by_c + 1, bx), by == by_c)
  shift = jnp.stack([bx + ox, by + oy], axis=-1) - reach + prior
  return shift.astype(jnp.float32), jnp.stack([sx, sy], axis=-1).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("pad",))
def _accumulate(frames, valid, line_shift, pad: int):
  """Sums (counts, coverage) [h + 2 pad, w + 2 pad] of the valid pixels of frames with
  each line put back where the tissue was: line r of frame i shifted by
  -line_shift[i, r] (bilinear splat), on a canvas ``pad`` px wider on every side."""
  n, h0, w0 = frames.shape
  h, w = h0 + 2 * pad, w0 + 2 * pad
  x = jnp.arange(w0, dtype=jnp.float32)[None, None, :] + pad - line_shift[:, :, None, 0]
  y = jnp.arange(h0, dtype=jnp.float32)[None, :, None] + pad - line_shift[:, :, None, 1]
  x, y = jnp.broadcast_to(x, (n, h0, w0)), jnp.broadcast_to(y, (n, h0, w0))
  x0, y0 = jnp.floor(x), jnp.floor(y)
  counts = jnp.zeros((h, w), jnp.float32)
  cover = jnp.zeros((h, w), jnp.float32)
  for dx in (0, 1):
    for dy in (0, 1):
      xi, yi = x0 + dx, y0 + dy
      weight = (1 - jnp.abs(x - xi)) * (1 - jnp.abs(y - yi))
      inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
      weight = jnp.where(inside, weight, 0.0) * valid
      xi = jnp.clip(xi, 0, w - 1).astype(jnp.int32)
      yi = jnp.clip(yi, 0, h - 1).astype(jnp.int32)
      counts = counts.at[yi, xi].add(weight * frames)
      cover = cover.at[yi, xi].add(weight)
  return counts, cover


def _depth_modes(blocks, valids, shifts, reference, pad: int, count: int, sigma: float = 1.0):
  """[count, H, W] the main ways the frames, each line put back where the tissue was, differ
  from ``reference``: the texture seen at other depths as the tissue moves along z. The
  leading principal components of the smoothed residuals of up to ``DEPTH_FRAMES`` frames,
  each scaled to its standard deviation over them; zeros from fewer than three frames."""
  from scipy import ndimage

  frames = [
    (block[i : i + 1], valid[i : i + 1], shift[i : i + 1])
    for block, valid, shift in zip(blocks, valids, shifts, strict=True)
    for i in range(len(block))
  ]
  picked = np.unique(np.linspace(0, len(frames) - 1, min(DEPTH_FRAMES, len(frames))).round())
  residuals = []
  for i in picked.astype(int):
    block, valid, shift = frames[i]
    c, v = _accumulate(jnp.asarray(block), jnp.asarray(valid), jnp.asarray(shift, jnp.float32), pad)
    c = ndimage.gaussian_filter(np.asarray(c, np.float64), sigma)
    v = ndimage.gaussian_filter(np.asarray(v, np.float64), sigma)
    residual = np.where(v > 0.5, c / np.maximum(v, 1e-12) - reference, 0.0)
    residuals.append(residual.astype(np.float32).ravel())
  if len(residuals) < 3:
    return np.zeros((count, *reference.shape), np.float32)
  residuals = np.asarray(residuals)
  residuals -= residuals.mean(0)
  _, values, vectors = np.linalg.svd(residuals, full_matrices=False)
  scale = values[:count] / math.sqrt(len(residuals))
  return (vectors[:count] * scale[:, None]).reshape(count, *reference.shape).astype(np.float32)


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
  from scipy import ndimage

  return ndimage.gaussian_filter(image, sigma, mode="nearest")


def _reference(blocks, valids, shifts, pad: int, sigma: float = 1.0) -> np.ndarray:
  """The tissue's image from ``blocks`` ([n, h, w] each, with their ``valids``) and their
  per-line shifts ([n, h, 2] each), on a canvas ``pad`` px wider than the frame on every
  side: the normalised, smoothed mean, positive everywhere (the mean where never seen)."""
  counts, cover = 0.0, 0.0
  for block, valid, shift in zip(blocks, valids, shifts, strict=True):
    c, v = _accumulate(jnp.asarray(block), jnp.asarray(valid), jnp.asarray(shift, jnp.float32), pad)
    counts, cover = counts + np.asarray(c, np.float64), cover + np.asarray(v, np.float64)
  counts, cover = _smooth(counts, sigma), _smooth(cover, sigma)
  mean = counts.sum() / max(cover.sum(), 1e-12)
  reference = np.where(cover > 1e-3 * cover.max(), counts / np.maximum(cover, 1e-12), mean)
  return np.maximum(reference, 0.05 * max(mean, 1e-6))


@functools.partial(jax.jit, static_argnames=("reach",))
def _similarity(frames, valid, *, reach: int, sigma: float = 1.0):
  """[k, k] how alike each pair of frames' backgrounds are: the largest correlation of the
  two, smoothed by a Gaussian of ``sigma`` px (the counts' noise is mostly finer than the
  tissue's texture), over shifts up to ``reach`` px. Left-out pixels read as the frame's
  mean."""
  k, h, w = frames.shape
  count = jnp.maximum(valid.sum((1, 2), keepdims=True), 1.0)
  mean = (frames * valid).sum((1, 2), keepdims=True) / count
  x = jnp.where(valid > 0, frames, mean) - mean
  x = jnp.pad(x, ((0, 0), (reach, reach), (reach, reach)))
  size = x.shape[1:]
  fy = jnp.fft.fftfreq(size[0])[:, None]
  fx = jnp.fft.rfftfreq(size[1])[None, :]
  spectrum = jnp.fft.rfft2(x) * jnp.exp(-2 * (jnp.pi * sigma) ** 2 * (fx**2 + fy**2))
  power = jnp.sum(jnp.abs(spectrum) ** 2, axis=(1, 2)) / (size[0] * size[1])  # Parseval
  spectrum = spectrum / jnp.sqrt(jnp.maximum(power, 1e-12))[:, None, None]
  cross = jnp.fft.irfft2(spectrum[:, None] * jnp.conj(spectrum[None, :]), s=size)
  near = jnp.roll(cross, (reach, reach), axis=(-2, -1))[..., : 2 * reach + 1, : 2 * reach + 1]
  return near.max(axis=(-2, -1))


def _most_typical(sample, valid, reach: int, candidates: int = 16) -> int:
  """The index of the frame of ``sample`` most like the others (of ``candidates`` evenly
  spread), where the reference starts. Tissue that moves along z shows each frame a
  different plane of its texture; a frame from the middle of that range is like frames
  from both ends, one from an end is unlike those from the other, and a reference that
  starts there loses them."""
  picked = np.unique(np.linspace(0, len(sample) - 1, min(candidates, len(sample))).round())
  picked = picked.astype(int)
  if len(picked) < 3:
    return int(picked[len(picked) // 2])
  similar = np.asarray(
    _similarity(jnp.asarray(sample[picked]), jnp.asarray(valid[picked]), reach=reach),
    np.float64,
  )
  np.fill_diagonal(similar, np.nan)
  return int(picked[np.nanargmax(np.nanmean(similar, axis=1))])


def background_mask(indices, shape, exclude: pd.DataFrame | None, radius_px: float):
  """[n, h, w] float32: 0 within ``radius_px`` of a position in ``exclude`` (frame, x, y)
  of the frames ``indices``, 1 elsewhere."""
  n = len(indices)
  h, w = shape
  valid = np.ones((n, h, w), np.float32)
  if exclude is None or len(exclude) == 0:
    return valid
  where = {int(f): i for i, f in enumerate(indices)}
  rows = exclude[exclude["frame"].isin(where)]
  r = int(math.ceil(radius_px))
  dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
  disc = dx**2 + dy**2 <= radius_px**2
  for f, x, y in zip(rows["frame"].to_numpy(), rows["x"].to_numpy(), rows["y"].to_numpy(),
                     strict=True):  # fmt: skip
    if not (np.isfinite(x) and np.isfinite(y)):
      continue
    cx, cy = int(round(x)), int(round(y))
    ys, xs = cy + dy[disc], cx + dx[disc]
    keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    valid[where[int(f)], ys[keep], xs[keep]] = 0.0
  return valid


def _centres(lines: int, h: int) -> np.ndarray:
  """[S] the middle line of each strip of ``lines`` lines (the last may be shorter)."""
  starts = np.arange(0, h, lines)
  return starts + (np.minimum(lines, h - starts) - 1) / 2


def _smoothed(shift: np.ndarray, size: int = 5) -> np.ndarray:
  """[n, S, 2] strip shifts with each replaced by the median of the ``size`` strips around
  it in recording order (outliers gone; motion slower than a few strips kept). The window
  is mirrored at the movie's ends, so that its first and last strips are checked by their
  neighbours too (a repeated end value would outvote them)."""
  from scipy import ndimage

  n, strips = shift.shape[:2]
  flat = shift.reshape(n * strips, 2)
  out = np.stack([ndimage.median_filter(flat[:, a], size, mode="mirror") for a in (0, 1)], -1)
  return out.reshape(shift.shape)


def _spline(time: np.ndarray, trace: np.ndarray) -> np.ndarray:
  """[n, 2] trace smoothed by a cubic smoothing spline in time, its smoothness chosen by
  generalised cross-validation (``scipy.interpolate.make_smoothing_spline``): the tissue
  moves smoothly, the registration's noise does not."""
  from scipy.interpolate import make_smoothing_spline

  if len(time) < 5:
    return trace
  x = time / np.median(np.diff(time))  # in strips: the criterion is ill-conditioned in s
  return np.stack([make_smoothing_spline(x, trace[:, a])(x) for a in (0, 1)], -1)


def _line_shifts(shift, lines: int, h: int) -> np.ndarray:
  """[n, S, 2] strip shifts -> [n, h, 2] per line, linear between strip centres (over the
  frames given, in order)."""
  n = shift.shape[0]
  centre = _centres(lines, h)
  rows = np.arange(h)
  return np.stack(
    [np.stack([np.interp(rows, centre, shift[i, :, a]) for a in (0, 1)], -1) for i in range(n)]
  )


def _centred(shift: np.ndarray) -> np.ndarray:
  """[n, S, 2] strip shifts less their median over frames, per strip: a reference built
  from sheared frames is itself distorted line by line, which shows as a shift of each
  strip that does not change over time; the tissue's own motion averages out over frames."""
  return shift - np.median(shift, axis=0, keepdims=True)


def halves_agree(left: np.ndarray, right: np.ndarray, max_lag: int = 2):
  """Whether two registrations of the same strips (the frame's left and right halves) see
  the same motion.

  The test correlates the two series' changes from strip to strip: independent noise, or
  two QDs the mask missed, one in each half, give changes that are independent of each
  other and nearly so from strip to strip (a random walk's steps), whereas the tissue moves
  both halves alike. The effective sample size allows for the short-range dependence of
  differenced noise (Bartlett: n / (1 + 2 sum_{k <= max_lag} rho_l(k) rho_r(k))).

  Returns:
    (one-sided p of the changes' correlation under independence; the spread of the
    motion the halves share, sqrt(cov) px; the noise of their mean, sd(left - right) / 2
    px).
  """
  ok = np.isfinite(left) & np.isfinite(right)
  left, right = left[ok], right[ok]
  common = math.sqrt(max(float(np.mean((left - left.mean()) * (right - right.mean()))), 0.0))
  noise = float(np.std(left - right) / 2)
  dl, dr = np.diff(left), np.diff(right)
  n = len(dl)
  if n < 8 or np.std(dl) == 0 or np.std(dr) == 0:
    return 1.0, common, noise

  def autocorrelation(x):
    x = x - x.mean()
    return np.array([np.sum(x[k:] * x[: n - k]) for k in range(max_lag + 1)]) / np.sum(x * x)

  inflation = 1 + 2 * np.sum(autocorrelation(dl)[1:] * autocorrelation(dr)[1:])
  n_eff = max(4.0, n / max(inflation, 1.0))
  r = float(np.corrcoef(dl, dr)[0, 1])
  z = math.atanh(min(max(r, -0.999999), 0.999999)) * math.sqrt(n_eff - 3)
  return 0.5 * math.erfc(z / math.sqrt(2)), common, noise


def estimate(
  frames,
  timing: Timing,
  *,
  exclude: pd.DataFrame | None = None,
  exclude_radius_px: float = 3.0,
  strip_lines: int = STRIP_LINES,
  max_shift_px: int | None = None,
  chunk: int = 64,
  alpha: float = ALPHA,
  progress: bool = False,
) -> TissueMotion:
  """The tissue's displacement per strip of lines, read from the movie's background.

  Args:
    frames: (T, H, W) movie (a memory map is read chunk by chunk).
    timing: when each pixel was recorded (``timing_for``).
    exclude: positions (frame, x, y px) that are not background, e.g. the QDs' detections:
      the pixels within ``exclude_radius_px`` of them are left out. Bright QDs otherwise
      pull each strip towards the brightest tissue nearby.
    exclude_radius_px: radius of the discs left out, px.
    strip_lines: lines per strip.
    max_shift_px: largest displacement from the reference searched (default a quarter of
      the frame's short side, at least ``MIN_SHIFT_PX``).
    chunk: frames per registration call (bounds memory).
    alpha: significance of the test of motion.
    progress: a progress bar over frames.

  Raises:
    ValueError: a movie that is not (T >= 2, H, W), or bad arguments.
  """
  from tqdm.auto import tqdm

  if getattr(frames, "ndim", 0) != 3 or frames.shape[0] < 2:
    raise ValueError(f"a movie must be (T >= 2, H, W), got shape {getattr(frames, 'shape', ())}")
  t, h, w = frames.shape
  if strip_lines < 1 or chunk < 1:
    raise ValueError(f"need strip_lines >= 1 and chunk >= 1, got {strip_lines}, {chunk}")
  pad = max(MIN_SHIFT_PX, min(h, w) // 4) if max_shift_px is None else int(max_shift_px)
  if pad < 1:
    raise ValueError(f"max_shift_px must be >= 1, got {max_shift_px}")
  chunk = min(chunk, t)
  coarse_lines = max(strip_lines, -(-h // COARSE_STRIPS))
  fine_centres = _centres(strip_lines, h)

  def shifts(block, mask, reference, modes, lines, prior=None):
    """Strip shifts of a block (padded to ``chunk`` frames: one compiled program), with the
    texture's change with depth ``modes`` (None: without it)."""
    n = len(block)
    fill = ((0, chunk - n), (0, 0), (0, 0))
    if prior is not None:
      prior = jnp.asarray(np.pad(np.rint(prior), ((0, chunk - n), (0, 0), (0, 0))), jnp.int32)
    out = strip_shifts(
      jnp.asarray(np.pad(block, fill)), jnp.asarray(np.pad(mask, fill)),
      jnp.asarray(reference, jnp.float32), prior,
      lines=lines, reach=pad if lines == coarse_lines else FINE_REACH_PX, pad=pad,
      modes=None if modes is None else jnp.asarray(modes),
    )  # fmt: skip
    return tuple(np.asarray(v)[:n].astype(np.float64) for v in out)

  def coarse_then_fine(block, mask, reference, modes):
    """(coarse [n, S_coarse, 2] searched everywhere, fine [n, S, 2] and its SE searched
    near the coarse estimate)."""
    coarse = _smoothed(shifts(block, mask, reference, modes, coarse_lines)[0], 3)
    prior = _line_shifts(coarse, coarse_lines, h)[:, fine_centres.round().astype(int)]
    return (coarse, *shifts(block, mask, reference, modes, strip_lines, prior))

  # The reference: first one frame, the middle one of an even sample; then the sample's
  # frames with their motion taken out, a few times.
  picked = np.unique(np.linspace(0, t - 1, min(t, REFERENCE_FRAMES)).round().astype(int))
  sample = np.asarray(frames[picked], np.float32)
  valid = background_mask(picked, (h, w), exclude, exclude_radius_px)
  clip = float(np.quantile(sample[valid > 0], CLIP_QUANTILE))
  sample = np.minimum(sample, clip)
  cuts = list(range(chunk, len(sample), chunk))
  blocks, valids = np.split(sample, cuts), np.split(valid, cuts)
  start = _most_typical(sample, valid, pad)
  reference = _reference(
    [sample[start][None]], [valid[start][None]], [np.zeros((1, h, 2))], pad, sigma=1.5
  )

  def rebuilt(reference, modes=None):
    """(per-line shifts of the sample against ``reference``, the reference rebuilt with
    them)."""
    fine = np.concatenate(
      [coarse_then_fine(b, v, reference, modes)[1] for b, v in zip(blocks, valids, strict=True)]
    )
    line_shift = _line_shifts(_smoothed(_centred(fine)), strip_lines, h)
    return line_shift, _reference(blocks, valids, np.split(line_shift, cuts), pad)

  def depth_modes(line_shift, reference):
    return _depth_modes(blocks, valids, np.split(line_shift, cuts), reference, pad, DEPTH_MODES)

  previous = None
  for _ in range(MAX_ITERATIONS):
    line_shift, reference = rebuilt(reference)
    if previous is not None and np.sqrt(np.mean((line_shift - previous) ** 2)) < CONVERGED_PX:
      break
    previous = line_shift
  settled = line_shift, reference, None
  # Then the texture's change with depth, fitted per strip beside its shift.
  for _ in range(DEPTH_ITERATIONS):
    line_shift, reference = rebuilt(reference, depth_modes(line_shift, reference))
  modes = depth_modes(line_shift, reference)

  def finish(line_shift, reference, modes, alpha, whole=True):
    """The motion of the whole movie against ``reference`` and ``modes``, and the test of it
    (None where the test fails and not ``whole``)."""
    # The left and right halves of the sample's frames, registered apart: tissue motion moves
    # both alike, while noise, or a QD the mask missed, moves each on its own.
    # Each frame helped build the reference, which pulls the frame's shift towards the one it
    # was built with, and so both halves alike: the halves of the odd frames are registered to
    # a reference of the even ones.
    halves = (np.arange(w) < w // 2).astype(np.float32)
    even = np.arange(len(sample)) % 2 == 0
    if even.sum() >= 1 and (~even).sum() >= 1:
      independent = _reference([sample[even]], [valid[even]], [line_shift[even]], pad)
      odd_blocks = np.split(sample[~even], range(chunk, int((~even).sum()), chunk))
      odd_valids = np.split(valid[~even], range(chunk, int((~even).sum()), chunk))
    else:
      independent, odd_blocks, odd_valids = reference, blocks, valids

    def half(side):  # fine strips of one half, each searched near its own coarse estimate
      parts = [coarse_then_fine(b, v * side, independent, modes)[1]
               for b, v in zip(odd_blocks, odd_valids, strict=True)]  # fmt: skip
      return _centred(np.concatenate(parts)).reshape(-1, 2)

    left, right = half(halves), half(1 - halves)
    tests = [halves_agree(left[:, a], right[:, a]) for a in (0, 1)]
    p_value = min(1.0, 2 * min(test[0] for test in tests))
    common = np.array([test[1] for test in tests])
    noise = np.array([test[2] for test in tests])
    if p_value >= alpha:
      applied = False
      reason = f"no motion common to both halves of the frame (p = {p_value:.2g})"
    elif not np.any(common > MIN_SIGNAL_TO_NOISE * noise):
      applied = False
      reason = (
        f"motion no larger than the registration's noise ({noise.max():.2g} px): too little "
        "texture in the background to read it"
      )
    else:
      applied, reason = True, f"motion common to both halves of the frame (p = {p_value:.2g})"
    if not (applied or whole):
      return None
    # The whole movie against the final reference.
    fine_parts, se_parts = [], []
    with tqdm(total=t, unit="frame", disable=not progress, desc="tissue motion") as bar:
      for first, block in io.iter_chunks(frames, chunk):
        mask = background_mask(np.arange(first, first + len(block)), (h, w), exclude,
                               exclude_radius_px)  # fmt: skip
        block = np.minimum(block, clip)
        _, fine, se = coarse_then_fine(block, mask, reference, modes)
        fine_parts.append(fine)
        se_parts.append(se)
        bar.update(len(block))
    raw = _centred(np.concatenate(fine_parts))  # [T, S, 2]
    shift = _smoothed(raw, 3)
    se = np.concatenate(se_parts)
    strips = shift.shape[1]
    frame = np.repeat(np.arange(t), strips)
    line = np.tile(fine_centres, t)
    time = timing.times(frame, (w - 1) / 2, line)
    trace = _spline(time, shift.reshape(-1, 2))
    rms = trace.std(axis=0)
    return TissueMotion(
      frame=frame,
      line=line,
      time_s=time,
      shift_px=trace,
      se_px=se.reshape(-1, 2).astype(np.float64),
      noise_px=noise,
      rms_px=rms,
      p_value=p_value,
      applied=applied,
      reason=reason,
      timing=timing,
    )

  motion = finish(line_shift, reference, modes, alpha)
  if not motion.applied:
    # The texture's change with depth is a refinement: where the registration with it does
    # not hold together (fitted freely at every shift, it can make a wrong shift fit better
    # than the right one, and the reference, rebuilt with such shifts, loses the tissue),
    # the registration without it (as it had settled) is tested, at half the level: the two
    # tests together pass a still movie at most 1.5 times as often as one.
    plain = finish(*settled, alpha / 2, whole=False)
    if plain is not None:
      motion = dataclasses.replace(
        plain, reason=f"{plain.reason}, without the texture's change with depth"
      )
  return motion


def correct(detections: pd.DataFrame, motion: TissueMotion) -> pd.DataFrame:
  """Detections (frame, x, y, ...) with the tissue's displacement at the time each was
  recorded taken out of x and y."""
  out = detections.copy()
  if len(out) == 0:
    return out
  times = motion.timing.times(out["frame"], out["x"], out["y"])
  shift = motion.at(times)
  out["x"] = out["x"].to_numpy(np.float64) - shift[:, 0]
  out["y"] = out["y"].to_numpy(np.float64) - shift[:, 1]
  return out


def unwarp(frames, motion: TissueMotion, first: int = 0) -> np.ndarray:
  """Frames resampled onto the tissue's grid: pixel (r, c) of frame f is read where the
  tissue point (c, r) was seen, (r + dy, c + dx) with d the displacement at line r's time
  (bilinear; the edge is repeated). The alternative to ``correct``: motion taken out
  before localisation rather than after it, at the cost of resampled, correlated noise.

  Args:
    frames: [n, h, w], frames ``first`` to ``first + n - 1`` of the movie.
    motion: the movie's ``TissueMotion``.
    first: the index of ``frames[0]`` in the movie.
  """
  from scipy import ndimage

  frames = np.asarray(frames, np.float32)
  n, h, w = frames.shape
  rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
  out = np.empty_like(frames)
  for i in range(n):
    times = motion.timing.times(first + i, (w - 1) / 2, np.arange(h))
    shift = motion.at(times)  # [h, 2]
    coords = [rows + shift[:, 1, None], cols + shift[:, 0, None]]
    out[i] = ndimage.map_coordinates(frames[i], coords, order=1, mode="nearest")
  return out
