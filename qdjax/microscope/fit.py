"""The simulator fitted to a user's microscope (docs/spec.md, section 7).

``fit_microscope``: N, B, sxy and D from frames of single diffusing QDs, by the method of
simulated moments through the differentiable simulator; the frames' PMT comes from
``qdjax.microscope.pmt_calibration``. ``fit_microscope_file`` turns the fit into a preset file.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from pathlib import Path
from typing import Any

import numpy as np

from qdjax import io
from qdjax.microscope.pmt_calibration import PMT_KEYS

FITTED = ("peak_photons", "background_photons", "sigma_xy_um", "diffusion_um2_s")
STATISTICS = (
  "background",  # mean of the pixels outside the window around the spot
  "spot_photons",  # window sum above background
  "spot_peak",  # 3x3 mean above background at the spot's centre
  "second_moment_x",  # sum v dx^2 over the window (along the scan lines)
  "second_moment_y",  # sum v dy^2 (across the lines)
  "row_offset_power",  # sum over rows of (sum_c v dx)^2: spread of each line's centre
  "row_offset_lag1",  # sum over adjacent rows of their centres' product: line-to-line drift
)
WINDOW_HALF = 4  # px: the window is 9 x 9 around the smoothed frame's brightest pixel
MIN_OUTSIDE = 16  # pixels outside the window, for the background
MIN_FRAME_PX = 9  # the smallest frame side a fit takes (docs/spec.md, section 7)
# A fit is refused when its J statistic rejects the model at this level (chi-square with
# the fit's degrees of freedom), and when the frames' spots are, at the stricter
# ``SPOT_LEVEL`` (one-sided), no brighter than noise alone or hold a second spot that one
# QD per frame does not give.
J_LEVEL = 0.01
SPOT_LEVEL = 0.001


def window_half(height: int, width: int) -> int:
  """The window's half size for this frame size: 4 px, smaller on small frames so that at
  least ``MIN_OUTSIDE`` pixels stay outside it for the background.

  Raises:
    ValueError: if even a 5 x 5 window leaves too few (frames under about 7 x 7 px).
  """
  for half in range(min(WINDOW_HALF, (min(height, width) - 1) // 2), 1, -1):
    if height * width - (2 * half + 1) ** 2 >= MIN_OUTSIDE:
      return half
  raise ValueError(
    f"frames of {height}x{width} px are too small to fit (need 16 px beyond a 5 x 5 spot "
    "window, e.g. 7 x 7)"
  )


def _smooth(frames):
  """Separable Gaussian blur (sd 1 px, 5 taps) of [n, h, w] frames, edges repeated."""
  import jax.numpy as jnp

  taps = jnp.exp(-0.5 * jnp.arange(-2.0, 3.0) ** 2)
  taps = taps / taps.sum()
  padded = jnp.pad(frames, ((0, 0), (2, 2), (2, 2)), mode="edge")
  rows = sum(taps[i] * padded[:, i : i + frames.shape[1], :] for i in range(5))
  return sum(taps[i] * rows[:, :, i : i + frames.shape[2]] for i in range(5))


def frame_statistics(frames):
  """Per-frame summary statistics of single-QD frames, in photons.

  Each frame is centred on its smoothed frame's brightest pixel; the statistics are sums
  over a 9 x 9 window there (smaller on frames under 10 px, see ``window_half``), with
  the background (the mean outside the window) subtracted. The same function is applied
  to the user's frames and to simulated ones, so whatever bias the centring has is the
  same on both sides. What each responds to: background -> B; spot photons and peak -> N
  (and sxy, z); the second moments -> the spot's size, sxy and the blur of D; the rows'
  centre offsets and their lag-1 product -> how far the QD moved between lines, i.e. D
  (a static QD's line centres agree).

  Args:
    frames: [n, h, w] photons.

  Returns:
    [n, len(STATISTICS)].
  """
  import jax
  import jax.numpy as jnp

  n, h, w = frames.shape
  half = window_half(h, w)
  size = 2 * half + 1
  flat = jax.lax.stop_gradient(_smooth(frames)).reshape(n, -1)
  peak = jnp.argmax(flat, axis=1)
  r0, c0 = peak // w, peak % w
  padded = jnp.pad(frames, ((0, 0), (half, half), (half, half)), mode="edge")
  window = jax.vmap(lambda f, r, c: jax.lax.dynamic_slice(f, (r, c), (size, size)))(padded, r0, c0)
  rows, cols = jnp.arange(h), jnp.arange(w)
  inside = (jnp.abs(rows[None, :, None] - r0[:, None, None]) <= half) & (
    jnp.abs(cols[None, None, :] - c0[:, None, None]) <= half
  )
  outside = (~inside).sum(axis=(1, 2))
  background = jnp.where(inside, 0.0, frames).sum(axis=(1, 2)) / jnp.maximum(outside, 1)
  v = window - background[:, None, None]
  d = jnp.arange(-half, half + 1.0)
  row_offset = (v * d[None, None, :]).sum(axis=2)  # [n, size]
  return jnp.stack(
    [
      background,
      v.sum(axis=(1, 2)),
      v[:, half - 1 : half + 2, half - 1 : half + 2].mean(axis=(1, 2)),
      (v * d[None, None, :] ** 2).sum(axis=(1, 2)),
      (v * d[None, :, None] ** 2).sum(axis=(1, 2)),
      (row_offset**2).sum(axis=1),
      (row_offset[:, 1:] * row_offset[:, :-1]).sum(axis=1),
    ],
    axis=1,
  )


def _around_peak(frames):
  """(smoothed frames [n, h, w], [n, h, w] mask of the window around each frame's brightest
  smoothed pixel)."""
  import jax.numpy as jnp

  n, h, w = frames.shape
  half = window_half(h, w)
  smooth = _smooth(frames)
  peak = jnp.argmax(smooth.reshape(n, -1), axis=1)
  r0, c0 = peak // w, peak % w
  rows, cols = jnp.arange(h), jnp.arange(w)
  inside = (jnp.abs(rows[None, :, None] - r0[:, None, None]) <= half) & (
    jnp.abs(cols[None, None, :] - c0[:, None, None]) <= half
  )
  return smooth, inside


def second_spot(frames):
  """Per frame: the brightest smoothed pixel outside the window around the brightest one,
  above the background (the mean outside that window), in photons: noise for a frame of
  one QD, a second spot's peak for a frame of two.

  Args:
    frames: [n, h, w] photons.

  Returns:
    [n].
  """
  import jax.numpy as jnp

  smooth, inside = _around_peak(frames)
  outside = (~inside).sum(axis=(1, 2))
  background = jnp.where(inside, 0.0, frames).sum(axis=(1, 2)) / jnp.maximum(outside, 1)
  return jnp.where(inside, -jnp.inf, smooth).max(axis=(1, 2)) - background


def background_spread(frames):
  """Per frame: the median absolute deviation of the pixels outside the window around
  the brightest smoothed pixel, in photons: the noise's size, barely moved by a second
  spot's few pixels.

  Args:
    frames: [n, h, w] photons.

  Returns:
    [n].
  """
  import jax.numpy as jnp

  _, inside = _around_peak(frames)
  outside = jnp.where(inside, jnp.nan, frames).reshape(len(frames), -1)
  center = jnp.nanmedian(outside, axis=1)
  return jnp.nanmedian(jnp.abs(outside - center[:, None]), axis=1)


@dataclasses.dataclass(frozen=True)
class Detector:
  """How recorded values become photons: PMT output (offset, gain 3/alpha) or photons."""

  pmt: dict[str, float] | None = None

  def to_photons(self, values):
    if self.pmt is None:
      return values
    return (values - self.pmt["pmt_offset"]) * (self.pmt["pmt_alpha"] / 3.0)

  def photon_variance(self, expected):
    """Variance, in photons, of one recorded pixel of mean ``expected`` photons."""
    if self.pmt is None:
      return expected
    # 12 e / alpha^2 + sigma^2 output units^2, times (alpha/3)^2.
    return expected * (4.0 / 3.0) + (self.pmt["pmt_dark_sigma"] * self.pmt["pmt_alpha"] / 3) ** 2


@functools.cache
def _compiled(pmt: tuple | None, learning_rate: float) -> types.SimpleNamespace:
  """The fit's jitted programs for one detector model and Adam step size. The frames'
  statistics, the keys and the base params are arguments, not constants baked into the
  programs: every fit of the same shapes runs the same compiled programs (in this process,
  and through the persistent compilation cache in the next)."""
  import jax
  import jax.numpy as jnp
  import optax

  detector_model = Detector(dict(pmt) if pmt is not None else None)

  def loss(theta, keys, base, obs_mean, obs_cov):
    sim = _simulated_statistics(theta, keys, base, detector_model)
    diff = sim.mean(axis=0) - obs_mean
    cov = obs_cov + jnp.cov(sim, rowvar=False) / len(keys)
    w = jax.lax.stop_gradient(jnp.linalg.inv(cov))
    return diff @ w @ diff

  optimizer = optax.adam(learning_rate)

  def step(theta, opt_state, keys, base, obs_mean, obs_cov):
    value, grad = jax.value_and_grad(loss)(theta, keys, base, obs_mean, obs_cov)
    updates, opt_state = optimizer.update(grad, opt_state, theta)
    return optax.apply_updates(theta, updates), opt_state, value

  def checked(photons):
    return frame_statistics(photons)[:, 2], second_spot(photons), background_spread(photons)

  def mean_and_all(theta, keys, base):
    frames = _simulated_frames(theta, keys, base, detector_model)
    sim = frame_statistics(frames)
    return sim.mean(axis=0), (sim, checked(frames))

  # Two programs of the simulator, not four: a compilation costs seconds, a run of 128
  # frames a fraction of one. ``step`` also gives J at a point (its value, before the
  # update), and the Jacobian's forward pass the statistics and the predictive checks of
  # the frames it simulated.
  return types.SimpleNamespace(
    optimizer=optimizer,
    step=jax.jit(step),
    jacobian=jax.jit(jax.jacfwd(mean_and_all, has_aux=True)),
    checked=jax.jit(checked),
  )


def _programs(detector_model: Detector, learning_rate: float = 0.05) -> types.SimpleNamespace:
  """``_compiled`` for a detector model (its PMT values as the cache key)."""
  pmt = None if detector_model.pmt is None else tuple(sorted(detector_model.pmt.items()))
  return _compiled(pmt, float(learning_rate))


def _simulated_statistics(log_theta, keys, base, detector_model: Detector):
  """Statistics of frames simulated at exp(log_theta) = (N, B, sxy, D): [n, k].

  The recorded values are drawn exactly (Poisson, or the PMT) and standardised; the frame
  is rebuilt as lambda + sqrt(var(lambda)) * that standardised noise. Forward, this is the
  exact draw; its gradient is that of a Gaussian reparameterisation, so the expected
  image, the paths (sqrt(2 D dt) times fixed normals) and the noise's size all carry
  gradients, with the same random numbers at every step (common random numbers).
  """
  return frame_statistics(_simulated_frames(log_theta, keys, base, detector_model))


def _simulated_frames(log_theta, keys, base, detector_model: Detector):
  """Frames simulated at exp(log_theta), in photons: [n, h, w] (see above)."""
  import jax
  import jax.numpy as jnp

  from qdjax.sim import simulate

  n_ph, b_ph, sxy, d = jnp.exp(log_theta)
  params = base.replace(
    peak_photons=n_ph,
    background_photons=b_ph,
    sigma_xy_um=sxy,
    diffusion_um2_s=jnp.stack([d, d]),
  )
  frames = simulate.render_batch(keys, params)
  expected = frames.expected
  recorded = jax.lax.stop_gradient(detector_model.to_photons(frames.counts))
  scale = jnp.sqrt(detector_model.photon_variance(expected))
  noise = jax.lax.stop_gradient((recorded - expected) / scale)
  return expected + scale * noise


@dataclasses.dataclass(frozen=True)
class MicroscopeFit:
  """Estimates of N, B, sxy, D with standard errors (see ``fit_microscope``)."""

  values: dict[str, float]
  standard_errors: dict[str, float]
  correlation: list[list[float]]
  j_statistic: float
  degrees_of_freedom: int
  statistics: dict[str, dict[str, float]]
  num_frames: int
  num_simulated: int
  steps: int
  identifiable: dict[str, bool]
  j_p_value: float = float("nan")
  noise_z: float = float("nan")
  spot_z: float = float("nan")
  second_spot_z: float = float("nan")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def fit_microscope(
  frames,
  base,
  detector_model: Detector = Detector(),
  num_simulated: int = 512,
  steps: int = 200,
  learning_rate: float = 0.05,
  seed: int = 0,
  start: dict[str, float] | None = None,
  progress: bool = False,
) -> MicroscopeFit:
  """Fits N, B, sxy and D to frames of single diffusing QDs (method of simulated moments).

  The per-frame ``frame_statistics`` of the user's frames are averaged; the same
  statistics of ``num_simulated`` frames simulated at (N, B, sxy, D) are matched to them
  by minimising the GMM distance (m_sim - m_obs)' W (m_sim - m_obs), W the inverse
  covariance of the difference, with Adam (optax) steps in log parameters through the
  differentiable simulator with common random numbers. Geometry, timing, sigma_z, the
  start-position ranges and the PMT come from ``base`` and ``detector_model``; they are
  not fitted (docs/spec.md, section 7).

  D is identifiable, but from a start far above it (the preset's D2) the statistics change
  slowly with D and Adam steps come down slowly: so D starts (unless ``start`` gives one)
  at the best J over a log grid of D, factors of 2 from 1/64 to 2 times the preset's D,
  before the Adam steps. Its accuracy on held-out frames (``bench.py --what=fit``):
  docs/spec.md, section 7.

  Standard errors: the GMM sandwich, (G' W G)^-1, with G the Jacobian of the simulated
  mean statistics (forward-mode through the simulator) and W counting both the frames'
  and the simulation's sampling noise. The J statistic (n times the distance) is about
  chi-square with (7 - 4) degrees of freedom when the model fits; far above that, the
  simulator does not describe these frames. A value whose relative standard error
  exceeds 50 % is reported as not identifiable from these frames (typically D when the
  QDs barely move between lines, or sxy and D when the spot is faint).

  Args:
    frames: [n, h, w] recorded values (PMT output if ``detector_model.pmt``, else photons).
    base: simulate.Params with the microscope's geometry and timing; its frame size must
      be the frames'. Its N, B, sxy, D are only the default start.
    detector_model: the PMT (or None: photons) of the frames.
    num_simulated: frames simulated per step.
    steps: Adam steps.
    learning_rate: Adam step size in log parameters.
    seed: key of the common random numbers.
    start: optional start values by name (default: moments of the frames and ``base``).
    progress: show a progress bar.

  The result also holds ``j_p_value`` (J against chi-square on its degrees of freedom) and
  two predictive checks against frames simulated at the fit (``spot_z``: the frames' spot
  peaks above noise alone; ``second_spot_z``: their second-brightest spots above one QD's
  frames), both in standard errors; ``check_fit`` refuses a fit on them.

  Raises:
    ValueError: fewer than 2 frames, NaN pixels, frames smaller than 9 x 9, or frames in
      which every pixel has one value.
  """
  import jax
  import jax.numpy as jnp
  from tqdm.auto import tqdm

  frames = io.check_stack(
    frames,
    np.float32,
    "expected frames [n, h, w]",
    "fitting a microscope needs a stack of frames (~1000 is good)",
  )
  height, width = frames.shape[1:]
  if min(height, width) < MIN_FRAME_PX:
    raise ValueError(
      f"frames of {height}x{width} px are too small: a microscope fit needs at least "
      f"{MIN_FRAME_PX}x{MIN_FRAME_PX} (a spot's 9 x 9 window and background around it)"
    )
  if float(frames.max()) == float(frames.min()):
    raise ValueError(
      f"the frames hold no spot: every pixel of every frame is {float(frames.min()):g}"
    )
  if (base.height, base.width) != frames.shape[1:]:
    raise ValueError(
      f"base params are {base.height}x{base.width} px but the frames are "
      f"{frames.shape[1]}x{frames.shape[2]}"
    )
  observed = np.asarray(frame_statistics(detector_model.to_photons(jnp.asarray(frames))))
  obs_mean = observed.mean(axis=0)
  obs_cov = np.cov(observed, rowvar=False) / len(frames)

  a = float(base.pixel_size_um)
  sxy0 = float(base.sigma_xy_um)
  guess = {
    "background_photons": max(float(obs_mean[0]), 1e-2),
    "sigma_xy_um": sxy0,
    "diffusion_um2_s": max(float(base.diffusion_um2_s[1]), 1e-2),
  }
  # Spot photons = N * 2 pi (sxy/a)^2 for a static, in-focus spot.
  guess["peak_photons"] = max(float(obs_mean[1]) / (2 * math.pi * (sxy0 / a) ** 2), 0.1)
  guess.update(start or {})
  log_theta = jnp.log(jnp.array([guess[k] for k in FITTED], jnp.float32))

  keys = jax.random.split(jax.random.key(seed), num_simulated)
  programs = _programs(detector_model, learning_rate)
  data = (keys, base, jnp.asarray(obs_mean), jnp.asarray(obs_cov))

  if "diffusion_um2_s" not in (start or {}):
    # D's start: the best of a log grid (factors of 2 from 1/64 to 2 times the preset's D)
    # at the other start values. Far above the truth the statistics change slowly with D
    # and Adam steps come down from there slowly; the grid puts the start near the valley.
    grid = guess["diffusion_um2_s"] * 2.0 ** np.arange(-6, 2)
    trials = [log_theta.at[3].set(math.log(d)) for d in grid]
    log_theta = min(trials, key=lambda t: _j(programs, t, data))

  opt_state = programs.optimizer.init(log_theta)
  best = (float("inf"), log_theta)
  bar = tqdm(range(steps), desc="fit microscope", disable=not progress)
  for _ in bar:
    new, opt_state, value = programs.step(log_theta, opt_state, *data)
    value = float(value)
    if value < best[0]:
      best = (value, log_theta)
    log_theta = new
    bar.set_postfix_str(f"J/n {value:.3g}")
  bar.close()
  log_theta = best[1]

  # One forward-mode pass gives the Jacobian and the simulated statistics themselves.
  jac, (sim, fitted_checks) = programs.jacobian(log_theta, keys, base)
  jac, sim = np.asarray(jac), np.asarray(sim)
  w = np.linalg.inv(obs_cov + np.cov(sim, rowvar=False) / num_simulated)
  diff = sim.mean(axis=0) - obs_mean
  cov_log = np.linalg.pinv(jac.T @ w @ jac)
  values = {k: float(v) for k, v in zip(FITTED, np.exp(np.asarray(log_theta)), strict=True)}
  se_log = np.sqrt(np.maximum(np.diag(cov_log), 0))
  standard_errors = {k: values[k] * float(s) for k, s in zip(FITTED, se_log, strict=True)}
  corr = cov_log / np.outer(se_log, se_log).clip(1e-30)
  j_statistic = float(diff @ w @ diff)
  degrees_of_freedom = len(STATISTICS) - len(FITTED)
  noise_z, spot_z, second_spot_z = _predictive_checks(
    programs, frames, log_theta, keys, base, detector_model, observed, fitted_checks
  )
  return MicroscopeFit(
    values=values,
    standard_errors=standard_errors,
    correlation=[[round(float(c), 3) for c in row] for row in corr],
    j_statistic=j_statistic,
    degrees_of_freedom=degrees_of_freedom,
    statistics={
      name: {"observed": float(o), "simulated": float(s), "se": float(math.sqrt(c))}
      for name, o, s, c in zip(
        STATISTICS, obs_mean, sim.mean(axis=0), np.diag(obs_cov), strict=True
      )
    },
    num_frames=len(frames),
    num_simulated=num_simulated,
    steps=steps,
    identifiable={k: bool(float(s) < 0.5) for k, s in zip(FITTED, se_log, strict=True)},
    j_p_value=_chi2_survival(j_statistic, degrees_of_freedom),
    noise_z=noise_z,
    spot_z=spot_z,
    second_spot_z=second_spot_z,
  )


def _chi2_survival(value: float, dof: int) -> float:
  """P(chi-square with ``dof`` degrees of freedom > value)."""
  from scipy import stats

  return float(stats.chi2.sf(value, dof))


def _z(observed, simulated) -> float:
  """(mean observed - mean simulated) in standard errors of that difference."""
  se = math.sqrt(np.var(observed) / len(observed) + np.var(simulated) / len(simulated))
  return float((np.mean(observed) - np.mean(simulated)) / max(se, 1e-30))


def _j(programs, log_theta, data) -> float:
  """J (the GMM distance) at ``log_theta``: the value of a ``step`` from there."""
  return float(programs.step(log_theta, programs.optimizer.init(log_theta), *data)[2])


def _predictive_checks(
  programs, frames, log_theta, keys, base, detector_model, observed, fitted_checks
):
  """Three checks of what the fit's statistics do not test, against frames simulated at
  the fit (the same keys), each in standard errors of the difference of means:

  - noise: the frames' ``background_spread`` above that of the fit's frames; large when
    the noise is not the detector's (PMT output taken for photons);
  - spot: the frames' spot peak (``frame_statistics``) above that of frames of noise alone
    (no QD, the fitted background); small when there is no spot;
  - second spot: the frames' ``second_spot`` above that of the fit's frames; large when
    frames hold several QDs.
  """
  import jax.numpy as jnp

  photons = detector_model.to_photons(jnp.asarray(frames))
  _, observed_second, observed_spread = (np.asarray(v) for v in programs.checked(photons))
  _, fitted_second, fitted_spread = (np.asarray(v) for v in fitted_checks)
  no_spot = jnp.asarray(log_theta).at[0].set(math.log(1e-6))  # N ~ 0: noise alone
  _, (_, noise_checks) = programs.jacobian(no_spot, keys, base)
  noise_peak = np.asarray(noise_checks[0])
  spot_index = STATISTICS.index("spot_peak")
  return (
    _z(observed_spread, fitted_spread),
    _z(observed[:, spot_index], noise_peak),
    _z(observed_second, fitted_second),
  )


def check_fit(result: MicroscopeFit, pmt_given: bool) -> None:
  """Refuses a fit whose frames the one-QD model does not describe, with the likely cause.

  Raises:
    ValueError: the frames' noise is not the detector's, they show no spot, or a second
      spot per frame (each at ``SPOT_LEVEL``), or the J statistic rejects the model (at
      ``J_LEVEL``).
  """
  from scipy import stats

  spot_limit = float(stats.norm.isf(SPOT_LEVEL))
  pmt_hint = "" if pmt_given else ", or PMT output fitted as photons (give its PMT calibration)"
  if abs(result.noise_z) > spot_limit:
    cause = (
      "is the PMT calibration given the one of these frames?"
      if pmt_given
      else "are they PMT output? give their PMT calibration"
    )
    raise ValueError(
      f"the frames' noise is not the detector model's: its spread is {result.noise_z:.3g} "
      f"standard errors from that of the fit's simulated frames; {cause}"
    )
  if not result.spot_z > spot_limit:
    raise ValueError(
      f"no spot in these frames: their brightest spots are no brighter than noise alone "
      f"(z = {result.spot_z:.2g}); a fit needs frames of single QDs{pmt_hint}"
    )
  if result.second_spot_z > spot_limit:
    raise ValueError(
      f"these frames hold more than one spot: their second-brightest spots are "
      f"{result.second_spot_z:.3g} standard errors brighter than one QD per frame gives; "
      "a fit needs frames of single QDs (crop each QD into frames of its own)"
    )
  if result.j_p_value < J_LEVEL:
    raise ValueError(
      f"the simulator does not fit these frames: J = {result.j_statistic:.3g} on "
      f"{result.degrees_of_freedom} dof (p = {result.j_p_value:.2g} < {J_LEVEL:g}); "
      "likely causes: several QDs per frame, frames not of the preset's geometry, too few "
      f"steps to converge{pmt_hint}"
    )


def fit_microscope_file(
  frames, preset, pmt=None, source="", pmt_source=None, progress=True, **kwargs
) -> dict[str, Any]:
  """``fit_microscope`` on a user's stack; returns the preset-file record (spec section 7).

  Args:
    frames: [n, h, w] recorded values (lazy arrays are read whole).
    preset: a ``presets.Preset`` giving geometry, timing, sigma_z and start ranges.
    pmt: ``pmt_calibration.load_pmt``'s values, or None for frames in photons.
    source, pmt_source: file names, for the provenance.
    **kwargs: passed to ``fit_microscope``.

  Raises:
    ValueError: bad frames (see ``fit_microscope``), or a fit ``check_fit`` refuses: frames
      with no spot, several QDs per frame, or a J statistic that rejects the model.
  """
  frames = np.asarray(frames, np.float32)
  if frames.ndim != 3:
    raise ValueError(f"expected frames [n, h, w], got shape {frames.shape}")
  detector_settings = {"detector": "pmt", **pmt} if pmt else {"detector": "poisson"}
  base = preset.sim_params(
    regime=2, height=int(frames.shape[1]), width=int(frames.shape[2]), **detector_settings
  )
  result = fit_microscope(frames, base, Detector(pmt), progress=progress, **kwargs)
  check_fit(result, pmt_given=bool(pmt))
  values = {k: v for k, v in preset.values.items()}
  values.update(height=int(frames.shape[1]), width=int(frames.shape[2]), **detector_settings)
  if isinstance(values.get("num_particles"), tuple):
    values["num_particles"] = list(values["num_particles"])
  record = {**values, **{k: _round(result.values[k]) for k in FITTED}}
  how = (
    f"fitted by experiments/fit_microscope.py to {result.num_frames} frames of {source} "
    f"(simulated moments, J = {result.j_statistic:.3g} on {result.degrees_of_freedom} dof)"
  )
  provenance = {k: f"from preset {preset.name}: {line}" for k, line in preset.provenance.items()}
  for k in FITTED:
    flag = "" if result.identifiable[k] else "; NOT identifiable from these frames (se > 50%)"
    provenance[k] = f"{how}: {record[k]:g} +- {result.standard_errors[k]:.2g}{flag}"
  provenance["regimes"] = "the fitted D for all three regimes"
  provenance["train_diffusion"] = "derived: log-uniform over [D/2, 2D] around the fitted D"
  provenance["height"] = provenance["width"] = f"the frames of {source}"
  if pmt:
    for k in PMT_KEYS.values():
      provenance[k] = f"from the PMT calibration {pmt_source}"
  else:
    provenance["detector"] = "frames given in photons (no --pmt): Poisson counts"
  record.update(
    preset=f"fit of {Path(source).name if source else 'frames'}",
    epsilons_px=list(preset.epsilons_px),
    standard_errors={k: float(f"{v:.3g}") for k, v in result.standard_errors.items()},
    provenance=provenance,
    fit=result.to_dict(),
  )
  return record


def _round(value: float) -> float:
  return float(f"{value:.4g}")
