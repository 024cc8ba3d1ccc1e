"""Poisson maximum-likelihood fit of one Gaussian spot plus background per frame.

The model is the anisotropic, rotated Gaussian of the sl2pm package,

    lambda(x, y) = b + A exp(-u^2 / (2 sx^2) - v^2 / (2 sy^2)),
    u = cos(t) (x - x0) + sin(t) (y - y0),   v = -sin(t) (x - x0) + cos(t) (y - y0),

at pixel centres (docs/spec.md coordinates), with counts ~ Poisson(lambda). The seven parameters
(b, A, x0, y0, sx, sy, t) are fitted in an unconstrained parameterisation: log b, log A,
x0, y0 as they are, sx and sy squashed by a sigmoid into [sigma_min, sigma_max] px, and
t free (the model is periodic in it). The fit is Levenberg-Marquardt with Fisher scoring:
the step solves (I + mu diag I) d = -grad with I = J^T diag(1/lambda) J the expected
information, which is positive semi-definite even far from the optimum, where the Poisson
Hessian is not. Each frame keeps its own damping mu; a step is taken only when it lowers
the negative log-likelihood. All frames run at once (``jax.vmap``) in one jitted loop with
a fixed number of iterations, so there is no host round trip per step.

**Start.** The frame is smoothed with a Gaussian of the PSF's width (normalised at the
edges), and the fit starts at the smoothed maximum, with b the frame's median and A twice
the smoothed peak above it (a Gaussian of width s smoothed by one of width s halves its
peak). Smoothing at the PSF's scale keeps the start off single bright noise pixels,
which at a few photons per pixel are often the raw maximum.

**Degenerate fits return nothing**: a non-finite value (e.g. a NaN pixel), a centre
outside the frame, an amplitude whose standard error is not finite, or a fit no better
than a flat background (blank or constant frames). A width at its bound is not
degenerate: on the validation splits such fits are mostly near the QD, and dropping them
cost AUC (docs/results.md, "The Poisson MLE").

**Score.** Two are computed: the log-likelihood ratio of the fit against a flat
background, ``llr = nll(flat b = mean) - nll(fit)``, and the amplitude over its standard
error from the inverse information, ``A / SE(A)``. ``llr`` is the default (see
``SCORE_CHOICE``). On the validation splits the two rank almost alike, llr slightly ahead
(docs/results.md, "The Poisson MLE"). The likelihood ratio weighs the evidence of the
whole spot, whereas A/SE also rewards narrow fits whose amplitude is well determined
because they sit on one bright noise pixel.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from qdjax import chunks

# The score that ranks detections (module docstring; docs/results.md, "The Poisson MLE").
SCORE_CHOICE = "llr"
SCORES = ("llr", "snr")
PARAM_NAMES = ("background", "amplitude", "x0", "y0", "sx", "sy", "theta")


@dataclasses.dataclass(frozen=True)
class Config:
  """Fit settings.

  Attributes:
    sigma_px: the start's spot width and the smoothing width, px.
    sigma_min, sigma_max: bounds of sx and sy, px.
    iterations: Levenberg-Marquardt steps (fixed, for one compiled loop).
    chunk: the most frames per compiled call.
    score: 'llr' (log-likelihood ratio vs flat background) or 'snr' (A / SE(A)).
  """

  sigma_px: float = 2.0
  # Half to three PSF widths: a spot is never much narrower than the PSF, and motion blur
  # within a frame widens it by a few. Tighter than (0.5, 12) px, these bounds raised the
  # mean validation AUC from 0.479 to 0.491 by stopping fits that collapse onto one
  # noise pixel or spread over the frame (first-probe preset, 333 frames per regime).
  sigma_min: float = 1.0
  sigma_max: float = 6.0
  iterations: int = 40
  chunk: int = 1024
  score: str = SCORE_CHOICE

  def __post_init__(self):
    if not 0 < self.sigma_min < self.sigma_px < self.sigma_max:
      raise ValueError(
        f"need 0 < sigma_min < sigma_px < sigma_max, got {self.sigma_min}, "
        f"{self.sigma_px}, {self.sigma_max}"
      )
    if self.score not in SCORES:
      raise ValueError(f"mle score must be one of {SCORES}, got {self.score!r}")
    if self.iterations < 1 or self.chunk < 1:
      raise ValueError("mle iterations and chunk must be >= 1")


def _squash(u, lo, hi):
  return lo + (hi - lo) * jax.nn.sigmoid(u)


def _unsquash(s, lo, hi):
  f = jnp.clip((s - lo) / (hi - lo), 1e-6, 1 - 1e-6)
  return jnp.log(f) - jnp.log1p(-f)


def _transforms(config: Config):
  """Per parameter (to natural, to unconstrained): log-amplitudes, free positions and times,
  sigmas squashed into [sigma_min, sigma_max]."""
  lo, hi = config.sigma_min, config.sigma_max
  positive = (jnp.exp, jnp.log)
  free = (lambda v: v, lambda v: v)
  sigma = (lambda u: _squash(u, lo, hi), lambda s: _unsquash(s, lo, hi))
  return (positive, positive, free, free, sigma, sigma, free)


def natural(theta, config: Config):
  """Unconstrained [..., 7] -> (b, A, x0, y0, sx, sy, t) [..., 7]."""
  pairs = enumerate(_transforms(config))
  return jnp.stack([forward(theta[..., i]) for i, (forward, _) in pairs], axis=-1)


def unconstrained(params, config: Config):
  """(b, A, x0, y0, sx, sy, t) [..., 7] -> unconstrained [..., 7]."""
  pairs = enumerate(_transforms(config))
  return jnp.stack([inverse(params[..., i]) for i, (_, inverse) in pairs], axis=-1)


def spot(params, height: int, width: int):
  """Expected image of natural parameters [7] -> [h, w] (pixel-centre sampled)."""
  b, a, x0, y0, sx, sy, t = (params[i] for i in range(7))
  y, x = jnp.mgrid[0:height, 0:width].astype(params.dtype)
  dx, dy = x - x0, y - y0
  c, s = jnp.cos(t), jnp.sin(t)
  u, v = c * dx + s * dy, -s * dx + c * dy
  return b + a * jnp.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))


def _nll(lam, counts):
  return jnp.sum(lam - counts * jnp.log(lam))


def fisher_information(params, height: int, width: int, config: Config):
  """Expected information of the natural parameters [7] -> [7, 7] (for CRLB checks)."""
  jac = jax.jacfwd(spot)(params, height, width).reshape(-1, 7)
  lam = spot(params, height, width).reshape(-1)
  return jac.T @ (jac / lam[:, None])


def _smooth(image, sigma):
  """Gaussian smoothing normalised at the edges (separable, 'same' size)."""
  radius = int(np.ceil(3 * sigma))
  offsets = jnp.arange(-radius, radius + 1, dtype=image.dtype)
  kernel = jnp.exp(-0.5 * (offsets / sigma) ** 2)

  def blur(x):
    x = jax.vmap(lambda row: jnp.convolve(row, kernel, mode="same"))(x)
    return jax.vmap(lambda col: jnp.convolve(col, kernel, mode="same"), 1, 1)(x)

  return blur(image) / blur(jnp.ones_like(image))


def initial_params(image, config: Config):
  """The robust start: [7] natural parameters from the smoothed maximum of [h, w]."""
  smooth = _smooth(image, config.sigma_px)
  h, w = image.shape
  index = jnp.argmax(smooth)
  y0, x0 = index // w, index % w
  background = jnp.maximum(jnp.median(image), 0.1)
  amplitude = jnp.maximum(2 * (smooth.max() - background), 0.5)
  s = config.sigma_px
  # sx != sy so the orientation is not a flat direction of the likelihood at the start.
  return jnp.stack(
    [background, amplitude, x0.astype(image.dtype), y0.astype(image.dtype), 1.05 * s, 0.95 * s, 0.0]
  ).astype(image.dtype)


def _fit_one(image, config: Config):
  h, w = image.shape
  counts = image.reshape(-1)

  def model(theta):
    return spot(natural(theta, config), h, w).reshape(-1)

  def nll(theta):
    return _nll(model(theta), counts)

  def step(_, state):
    theta, mu, current = state
    lam = model(theta)
    jac = jax.jacfwd(model)(theta)  # [npix, 7]
    grad = jac.T @ (1 - counts / lam)
    info = jac.T @ (jac / lam[:, None])
    damped = info + mu * jnp.diag(jnp.diag(info)) + 1e-6 * jnp.eye(7, dtype=info.dtype)
    trial = theta - jnp.linalg.solve(damped, grad)
    value = nll(trial)
    better = jnp.isfinite(value) & (value < current)
    theta = jnp.where(better, trial, theta)
    current = jnp.where(better, value, current)
    mu = jnp.where(better, mu / 3, mu * 4)
    return theta, jnp.clip(mu, 1e-6, 1e8), current

  theta0 = unconstrained(initial_params(image, config), config)
  state = (theta0, jnp.asarray(1e-2, image.dtype), nll(theta0))
  theta, _, value = jax.lax.fori_loop(0, config.iterations, step, state)

  params = natural(theta, config)
  lam = model(theta)
  # The information of the natural parameters: a width pinned at its bound makes the
  # unconstrained one singular (the sigmoid is flat there) but not this one. pinv copes
  # with the orientation being undetermined when sx == sy.
  jac = jax.jacfwd(spot)(params, h, w).reshape(-1, 7)
  info = jac.T @ (jac / lam[:, None])
  se_amplitude = jnp.sqrt(jnp.linalg.pinv(info)[1, 1])
  flat = jnp.maximum(counts.mean(), 1e-6)
  llr = _nll(jnp.full_like(counts, flat), counts) - value
  x0, y0 = params[2], params[3]
  valid = (
    jnp.all(jnp.isfinite(params))
    & jnp.isfinite(value)
    & jnp.isfinite(se_amplitude)
    & (se_amplitude > 0)
    & (x0 >= -0.5)
    & (x0 <= w - 0.5)
    & (y0 >= -0.5)
    & (y0 <= h - 0.5)
    # A spot that explains nothing a flat background does not, or carries no photons,
    # is no spot (a blank or constant frame).
    & (llr > 0)
    & (params[1] > 1e-3)
  )
  return FitResult(params=params, nll=value, llr=llr, snr=params[1] / se_amplitude, valid=valid)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FitResult:
  """Per-frame fit (arrays lead with the frame axis n).

  Attributes:
    params: [n, 7] (background, amplitude, x0, y0, sx, sy, theta), px and photons.
    nll: [n] negative log-likelihood at the fit (without log k! terms).
    llr: [n] nll of a flat background minus nll of the fit.
    snr: [n] amplitude over its standard error.
    valid: [n] False for degenerate fits.
  """

  params: jax.Array
  nll: jax.Array
  llr: jax.Array
  snr: jax.Array
  valid: jax.Array


@functools.partial(jax.jit, static_argnames="config")
def _fit_batch(images, config: Config) -> FitResult:
  return jax.vmap(lambda image: _fit_one(image, config))(images)


def fit(images, config: Config = Config(), progress=None) -> FitResult:
  """Fits every frame of ``images`` [n, h, w]; returns host (NumPy) arrays.

  Frames go through in chunks of ``config.chunk`` (see ``chunks.map_chunks``), so calls
  of many sizes share a few compiled programs; ``progress`` advances by frames.
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 3:
    raise ValueError(f"images must be [n, h, w], got shape {images.shape}")
  return chunks.map_chunks(
    functools.partial(_fit_batch, config=config), images, config.chunk, progress=progress
  )


class Locator:
  """``Locator(config)(images) -> list of [k, 3] (x, y, score)``, k = 0 or 1 per frame; a
  ``qdjax.localize.locator.Locator``."""

  method = "mle"  # its name in ``qdjax.localize.locator`` (default score cut there)

  def __init__(self, config: Config = Config()):
    self.config = config

  def __call__(self, images, progress=None) -> list[np.ndarray]:
    """images: [n, h, w] -> n arrays [k, 3] of (x, y, score), k = 0 or 1."""
    result = fit(images, self.config, progress)
    score = result.llr if self.config.score == "llr" else result.snr
    out = []
    for params, s, ok in zip(result.params, score, result.valid, strict=True):
      if ok and np.isfinite(s):
        out.append(np.array([[params[2], params[3], s]], np.float64))
      else:
        out.append(np.zeros((0, 3)))
    return out
