"""Two-photon raster-scan frames of diffusing quantum dots (docs/spec.md, section 1).

Pure functions, keys first, in the style of jax-md:

    params = simulate.make_params(height=24, width=25, diffusion_um2_s=0.3, ...)
    frames = simulate.simulate_batch(jax.random.key(0), params, 128)

``render(key, params)`` draws one frame; ``simulate_batch`` is its jitted vmap. With
``params.tissue`` (``qdjax.sim.tissue``) a frame also has tissue motion within it (the QDs
and background displaced by d(t) at each sample, t from the frame's first sample) and a
structured background; ``keypoints`` are then where the QDs appeared.
``expected_image`` is the deterministic, differentiable heart: the expected photon count
of every pixel given the QD paths, used by the simulator, the tests and (later) the
calibration to real frames.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax.scipy.special import erf

from qdjax.sim import detector, scan
from qdjax.sim import tissue as tissue_lib

_SQRT2 = math.sqrt(2.0)


@struct.dataclass
class Params:
  """Everything that defines a simulated frame. Names follow docs/spec.md, section 1.

  Geometry and particle counts are static (they set array shapes); every physical value
  is a traced leaf, so ``jax.grad`` can reach it. Build with ``make_params``, which
  validates; the raw constructor does not.
  """

  pixel_size_um: Any
  dwell_s: Any
  retrace_s: Any
  sigma_xy_um: Any
  sigma_z_um: Any
  peak_photons: Any
  background_photons: Any
  margin_px: Any
  z_range_um: Any
  # (lo, hi); lo == hi is a single D, otherwise D ~ log-uniform on [lo, hi] per frame.
  diffusion_um2_s: Any
  # The PMT of docs/spec.md, section 7, used when detector == 'pmt': Gamma rate per output unit
  # (gain 3/alpha), dark-noise sd and mean in output units. Defaults: sl2pm's calibration.
  pmt_alpha: Any = 0.44
  pmt_dark_sigma: Any = 8.1
  pmt_offset: Any = -2.74
  # Tissue motion and structured background (qdjax.sim.tissue.Tissue); None: neither.
  tissue: Any = None
  height: int = struct.field(pytree_node=False, default=24)
  width: int = struct.field(pytree_node=False, default=25)
  substeps: int = struct.field(pytree_node=False, default=1)
  num_particles: tuple[int, int] = struct.field(pytree_node=False, default=(1, 1))
  # 'poisson' (the paper's) or 'pmt'; see qdjax.sim.detector.
  detector: str = struct.field(pytree_node=False, default="poisson")

  @property
  def max_particles(self) -> int:
    return self.num_particles[1]

  def to_dict(self) -> dict[str, Any]:
    """Plain-Python values, named as in docs/spec.md, sections 1 and 7 (for JSON); the
    ``pmt_*`` values only when the detector is the PMT."""
    out = {}
    for f in dataclasses.fields(self):
      if f.name in PMT_FIELDS and self.detector != "pmt":
        continue
      value = getattr(self, f.name)
      if f.name == "tissue":
        if value is not None:
          out[f.name] = value.to_dict()
        continue
      if f.name == "diffusion_um2_s":
        lo, hi = (_round32(v) for v in jnp.asarray(value))
        value = lo if lo == hi else [lo, hi]
      elif f.name == "num_particles":
        value = list(value)
      elif f.name not in ("height", "width", "substeps", "detector"):
        value = _round32(value)
      out[f.name] = value
    return out


def _round32(value) -> float:
  """A float32 leaf as the short decimal it was written as (0.1, not 0.10000000149)."""
  return float(f"{float(value):.7g}")


PMT_FIELDS = ("pmt_alpha", "pmt_dark_sigma", "pmt_offset")

# Values that must be finite and >= 0, those that must be > 0, and those only finite.
_NON_NEGATIVE = (
  "retrace_s",
  "peak_photons",
  "background_photons",
  "margin_px",
  "z_range_um",
  "pmt_dark_sigma",
)
_POSITIVE = ("pixel_size_um", "dwell_s", "sigma_xy_um", "sigma_z_um", "pmt_alpha")
_FINITE = ("pmt_offset",)


def make_params(**values) -> Params:
  """Validated ``Params`` from spec-named values.

  ``diffusion_um2_s`` may be a number or a (lo, hi) pair; ``tissue`` a
  ``qdjax.sim.tissue.Tissue`` (tissue motion within the frame and a structured
  background) or None. Unknown names are an error.

  Raises:
    ValueError: naming the first bad parameter.
  """
  names = {f.name for f in dataclasses.fields(Params)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ValueError(f"unknown simulation parameter(s): {', '.join(unknown)}")
  values = dict(values)
  diffusion = values.get("diffusion_um2_s", 0.0)
  if isinstance(diffusion, (int, float)) or jnp.ndim(diffusion) == 0:
    diffusion = (diffusion, diffusion)
  values["diffusion_um2_s"] = diffusion
  if "num_particles" in values:
    n = values["num_particles"]
    values["num_particles"] = (
      (int(n), int(n)) if isinstance(n, (int, float)) else tuple(int(v) for v in n)
    )
  check_params(values)
  fields = {}
  for name, value in values.items():
    if name == "diffusion_um2_s":
      value = jnp.asarray(value, jnp.float32)
    elif name not in ("height", "width", "substeps", "num_particles", "detector", "tissue"):
      value = jnp.asarray(value, jnp.float32)
    fields[name] = value
  defaults = dict(
    pixel_size_um=0.1,
    dwell_s=2e-6,
    retrace_s=1.1e-3,
    sigma_xy_um=0.2,
    sigma_z_um=0.6,
    peak_photons=3.0,
    background_photons=4.0,
    margin_px=2.0,
    z_range_um=0.3,
    diffusion_um2_s=jnp.zeros(2, jnp.float32),
    **{f.name: f.default for f in dataclasses.fields(Params) if f.name in PMT_FIELDS},
  )
  for name, value in defaults.items():
    fields.setdefault(name, jnp.asarray(value, jnp.float32))
  return Params(**fields)


def check_params(values: Mapping[str, Any]) -> None:
  """Raises ValueError naming the first invalid value in a spec-named mapping."""

  def finite(name, v):
    try:
      v = float(v)
    except (TypeError, ValueError):
      raise ValueError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(v):
      raise ValueError(f"{name} must be finite, got {v}")
    return v

  for name in _POSITIVE:
    if name in values and finite(name, values[name]) <= 0:
      raise ValueError(f"{name} must be > 0, got {values[name]}")
  for name in _NON_NEGATIVE:
    if name in values and finite(name, values[name]) < 0:
      raise ValueError(f"{name} must be >= 0, got {values[name]}")
  for name in _FINITE:
    if name in values:
      finite(name, values[name])
  if "diffusion_um2_s" in values:
    lo, hi = (finite("diffusion_um2_s", v) for v in values["diffusion_um2_s"])
    if lo < 0 or hi < 0:
      raise ValueError(f"diffusion_um2_s must be >= 0, got {lo if lo < 0 else hi}")
    if hi < lo:
      raise ValueError(f"diffusion_um2_s range must have lo <= hi, got {lo}:{hi}")
    if lo == 0 < hi:
      raise ValueError("diffusion_um2_s range is log-uniform: lo must be > 0, got 0")
  for name in ("height", "width", "substeps"):
    if name in values:
      v = values[name]
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
  if "num_particles" in values:
    lo, hi = values["num_particles"]
    if lo < 0 or hi < lo:
      raise ValueError(f"num_particles must be (min, max) with 0 <= min <= max, got {lo}:{hi}")
  if values.get("tissue") is not None and not isinstance(values["tissue"], tissue_lib.Tissue):
    raise ValueError(f"tissue must be a qdjax.sim.tissue.Tissue, got {values['tissue']!r}")
  if "detector" in values and values["detector"] not in detector.MODELS:
    raise ValueError(
      f"detector must be one of {sorted(detector.MODELS)}, got {values['detector']!r}"
    )
  if {"margin_px", "width", "height"} <= set(values):
    span = min(values["width"], values["height"]) - 1 - 2 * float(values["margin_px"])
    if span < 0:
      raise ValueError(
        f"margin_px={values['margin_px']} leaves no room in a "
        f"{values['height']}x{values['width']} frame"
      )


@struct.dataclass
class Frame:
  """One simulated frame (a leading batch axis is added by ``simulate_batch``).

  Attributes:
    counts: [h, w] recorded photons.
    expected: [h, w] the noise-free expected image lambda.
    keypoints: [P, 2] trajectory centroid (x, y) in px, trackpy convention; NaN if absent.
    present: [P] the QD exists in this frame and its centroid lies inside the frame.
    z: [P] z centroid in um (NaN if absent).
    diffusion: [] the D (um^2/s) of this frame's QDs.
  """

  counts: jax.Array
  expected: jax.Array
  keypoints: jax.Array
  present: jax.Array
  z: jax.Array
  diffusion: jax.Array


def sample_diffusion(key, params: Params):
  """D for one frame: the value, or log-uniform on the (lo, hi) range."""
  lo, hi = params.diffusion_um2_s[0], params.diffusion_um2_s[1]
  # lo * (hi/lo)^u is log-uniform and stays exactly lo (with finite gradients) when lo == hi.
  ratio = jnp.where(hi > lo, hi / jnp.where(lo > 0, lo, 1.0), 1.0)
  return lo * ratio ** jax.random.uniform(key)


def start_positions(key, params: Params):
  """Uniform start positions of ``max_particles`` QDs: [P, 3] um (x, y, z)."""
  p = params.max_particles
  kx, ky, kz = jax.random.split(key, 3)
  a, m = params.pixel_size_um, params.margin_px
  x = jax.random.uniform(kx, (p,), minval=m, maxval=params.width - 1 - m) * a
  y = jax.random.uniform(ky, (p,), minval=m, maxval=params.height - 1 - m) * a
  z = jax.random.uniform(kz, (p,), minval=-1.0, maxval=1.0) * params.z_range_um
  return jnp.stack([x, y, z], axis=-1)


def brownian_paths(key, params: Params, diffusion, start):
  """3D Brownian paths sampled at every dwell sample (reparameterised in D).

  Args:
    key: PRNG key.
    params: geometry and timing.
    diffusion: [] D in um^2/s shared by all QDs, or [P], one per QD.
    start: [P, 3] um, the position at the first sample.

  Returns:
    positions: [P, height, width, substeps, 3] um.
  """
  h, w, k = params.height, params.width, params.substeps
  dt = scan.sample_time_steps(h, w, k, params.dwell_s, params.retrace_s)
  p, line = start.shape[0], w * k
  diffusion = jnp.asarray(diffusion)
  if diffusion.ndim:  # [P, 1] against dt's samples
    diffusion = diffusion[:, None]
  # dt = 0 only at the first sample; keep sqrt away from 0 there so gradients stay finite.
  scale = jnp.where(dt > 0, jnp.sqrt(2.0 * diffusion * jnp.where(dt > 0, dt, 1.0)), 0.0)
  # Coordinate-major [3, P, h, w*K]: the long axes are minor, which vectorises far better
  # on the CPU than a trailing axis of 3.
  steps = jax.random.normal(key, (3, p, h, line)) * scale.reshape(scale.shape[:-1] + (h, line))
  within_line = _cumsum_last(steps)
  line_ends = within_line[..., -1:]
  before_line = jnp.cumsum(line_ends, axis=-2) - line_ends
  path = start.T[:, :, None, None] + before_line + within_line
  return jnp.moveaxis(path, 0, -1).reshape(p, h, w, k, 3)


# Up to this length a cumulative sum runs as a matmul with a triangular matrix, which is
# several times faster than XLA's cumsum on the CPU and still O(n) memory per line.
_MATMUL_CUMSUM_MAX = 256


def _cumsum_last(x):
  n = x.shape[-1]
  if n > _MATMUL_CUMSUM_MAX:
    return jnp.cumsum(x, axis=-1)
  upper = jnp.triu(jnp.ones((n, n), x.dtype))
  # HIGHEST: TPUs would otherwise multiply in bfloat16 and blur the path.
  return jnp.matmul(x, upper, precision=jax.lax.Precision.HIGHEST)


def expected_image(positions, active, params: Params, background=None):
  """Expected photons per pixel, lambda = B + N * time-average of the 2P PSF.

  The QD is held at its sample position for each of the K slices of a dwell, and the
  Gaussian is integrated exactly over the beam's sweep across that slice (an erf
  difference). With K -> infinity this is the sampled mean of docs/spec.md, section 1; at
  finite K it is more accurate, since the beam moves a full pixel per dwell while a QD
  moves nanometres.

  Args:
    positions: [P, h, w, K, 3] um.
    active: [P] bool, which QDs exist; or [P, h], which QDs emit on each line (a
      blinking QD in a movie).
    params: Params.
    background: [h, w] expected background photons (a structured background,
      ``qdjax.sim.tissue``); None: the flat ``params.background_photons``.

  Returns:
    lam: [h, w] expected photons.
  """
  a = params.pixel_size_um
  s_xy, s_z = params.sigma_xy_um, params.sigma_z_um
  x, y, z = positions[..., 0], positions[..., 1], positions[..., 2]
  x_start, x_end = scan.beam_sweep_um(params.width, params.substeps, a)
  y_beam = scan.beam_rows_um(params.height, a)[:, None, None]
  scale = s_xy * _SQRT2
  # mean over the slice of exp(-(x - xb)^2 / 2 s^2) for xb sweeping [x_start, x_end].
  sweep = (erf((x - x_start) / scale) - erf((x - x_end) / scale)) * (
    s_xy * math.sqrt(math.pi / 2) / (x_end - x_start)
  )
  psf = sweep * jnp.exp(-((y - y_beam) ** 2) / (2 * s_xy**2) - z**2 / (2 * s_z**2))
  active = jnp.asarray(active)
  psf = jnp.where(active.reshape(active.shape + (1,) * (4 - active.ndim)), psf, 0.0)
  if background is None:
    background = params.background_photons
  return background + params.peak_photons * psf.mean(axis=-1).sum(axis=0)


def trajectory_centroid(positions, params: Params):
  """Mean (x, y) in px and mean z in um of each path over all recorded samples.

  Returns:
    (keypoints [P, 2] px, z [P] um).
  """
  mean = positions.mean(axis=(1, 2, 3))
  return mean[:, :2] / params.pixel_size_um, mean[:, 2]


def inside_frame(keypoints, params: Params):
  """[P] bool: centroid within [-1/2, w-1/2] x [-1/2, h-1/2]."""
  x, y = keypoints[:, 0], keypoints[:, 1]
  return (x >= -0.5) & (x <= params.width - 0.5) & (y >= -0.5) & (y <= params.height - 0.5)


def _render_noise_free(key, params: Params):
  """One frame without its counts; returns (frame with counts=None, noise key)."""
  k_count, k_d, k_start, k_path, k_noise = jax.random.split(key, 5)
  lo, hi = params.num_particles
  count = jax.random.randint(k_count, (), lo, hi + 1)
  active = jnp.arange(params.max_particles) < count
  diffusion = sample_diffusion(k_d, params)
  positions = brownian_paths(k_path, params, diffusion, start_positions(k_start, params))
  background = None
  if params.tissue is not None:
    # The QDs start in the tissue's frame; the frame shows them, and the background, where
    # the moving tissue carries them at each sample (t from the frame's first sample).
    modes = tissue_lib.draw(jax.random.fold_in(key, tissue_lib.STREAM), params.tissue)
    positions, background, _ = tissue_lib.observe(params.tissue, modes, params, positions)
  keypoints, z = trajectory_centroid(positions, params)
  present = active & inside_frame(keypoints, params)
  frame = Frame(
    counts=None,
    expected=expected_image(positions, active, params, background),
    keypoints=jnp.where(present[:, None], keypoints, jnp.nan),
    present=present,
    z=jnp.where(present, z, jnp.nan),
    diffusion=diffusion,
  )
  return frame, k_noise


def render_batch(keys, params: Params, *, per_frame: bool = False) -> Frame:
  """One frame per key: a Frame whose arrays lead with [len(keys)].

  The physics is vmapped frame by frame; the detector sees the whole batch at once, so
  its data-dependent choices are made once per batch (see ``qdjax.sim.detector``).

  Args:
    keys: [n] PRNG keys.
    params: shared by every frame, or, with ``per_frame``, every leaf leading with [n]:
      frame i is drawn with the values ``params`` holds at i (static fields are shared).
  """
  frames, noise_keys = render_noise_free_batch(keys, params, per_frame=per_frame)
  return frames.replace(counts=detector.record_batch(noise_keys, frames.expected, params))


def render_noise_free_batch(keys, params: Params, *, per_frame: bool = False):
  """``render_batch`` before the detector: (Frame with ``counts`` None, [n] keys that
  ``detector.record_batch`` draws the counts from)."""
  return jax.vmap(_render_noise_free, (0, 0 if per_frame else None))(keys, params)


@jax.jit
def render(key, params: Params) -> Frame:
  """Draws one frame: QD count, D, start positions, paths, image, noise, ground truth."""
  return jax.tree.map(lambda x: x[0], render_batch(key[None], params))


@functools.partial(jax.jit, static_argnums=2)
def simulate_batch(key, params: Params, num_frames: int) -> Frame:
  """``num_frames`` independent frames: a Frame whose arrays lead with [num_frames].

  Frame i equals ``render(jax.random.split(key, num_frames)[i], params)``.
  """
  return render_batch(jax.random.split(key, num_frames), params)


@jax.jit
def _render_indices(base_key, params: Params, indices):
  return render_batch(jax.vmap(lambda i: jax.random.fold_in(base_key, i))(indices), params)


def simulate_indices(seed: int, params: Params, indices) -> Frame:
  """Frames ``indices`` of the dataset with this seed.

  Frame i is drawn from ``fold_in(key(seed), i)``, so any frame can be redrawn alone, and
  ``experiments/simulate.py`` and the TFDS export give identical frames.
  """
  return _render_indices(jax.random.key(seed), params, jnp.asarray(indices, jnp.uint32))
