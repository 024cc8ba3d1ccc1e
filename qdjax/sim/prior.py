"""Training frames for a general model: every frame its own microscope and scene.

A model trained on one preset knows one photon level, one QD per 24 x 25 crop and one
detector. Frames from a real microscope are brighter or dimmer, PMT-recorded and whole
fields with several QDs. Here each training frame draws its own values from wide ranges:

- peak photons N, log-uniform from dim (the ``paper`` preset's N = 2.4) to bright (in vivo
  spots are 11 to 16 photons per pixel after blur, docs/spec.md, section 9), and the background
  B = N * ratio + extra, the ratio log-uniform from in vivo's ~0.05 to the paper's ~1;
- the detector: Poisson photon counts, or PMT output (Gamma(3n, alpha) plus Gaussian dark
  noise and an offset) over a range of alpha and dark sigma around sl2pm's 0.44 and 8.1;
- D log-uniform over 0.05 to 20 um^2/s, PSF widths, pixel size, z range and start margin;
- 0 to several QDs per frame, the upper bound growing with the frame's area;
- optionally (``tissue_fraction`` of the frames; 0 by default) tissue: motion within the
  frame (breathing, heartbeat, drift, so spots are sheared line by line) and a structured
  background (a log-normal texture, sometimes a vessel edge, a slow gradient;
  ``qdjax.sim.tissue``). Off by default, so that the shipped general model's training
  distribution, and any run of its config, stay what they were; set
  ``prior.tissue_fraction`` (e.g. 0.5) to train a detector that has seen them.

Frame sizes cycle by step (``frame_size``): each step's frames share one size, so a step
is one static shape and each size compiles once. Geometry that is not drawn (dwell,
retrace, substeps) comes from a base ``simulate.Params`` (a preset's).

    prior = prior.Prior()                         # or prior.from_config(config.prior)
    h, w = prior.frame_size(step)
    frames = prior.draw(fold_in(data_key, step), prior, base, h, w, batch_size)

Everything runs inside ``jax.jit`` on the device: a frame's values, paths, image and
counts are drawn from its key, so a batch depends only on (key, step).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from qdjax.sim import detector, simulate
from qdjax.sim import tissue as tissue_lib

# Value ranges drawn log-uniform (scale parameters); the others are uniform.
LOG_UNIFORM = (
  "peak_photons",
  "background_ratio",
  "diffusion_um2_s",
  "pmt_alpha",
  "pmt_dark_sigma",
)
# (lo, hi) ranges, in the order they are drawn.
RANGES = (
  "peak_photons",
  "background_ratio",
  "background_extra",
  "diffusion_um2_s",
  "sigma_xy_um",
  "sigma_z_um",
  "pixel_size_um",
  "z_range_um",
  "margin_px",
  "pmt_alpha",
  "pmt_dark_sigma",
  "pmt_offset",
)
# Tissue ranges (drawn from a stream of their own, so the others stay as they were): per
# axis for amplitudes and drift (drift with a random sign), per frame for the rest.
TISSUE_RANGES = (
  "texture_cv",
  "texture_um",
  "vessel_contrast",
  "vessel_width_um",
  "gradient_per_um",
  "breathing_um",
  "breathing_hz",
  "heartbeat_um",
  "heartbeat_hz",
  "drift_um_s",
)
TISSUE_LOG_UNIFORM = ("texture_um", "vessel_width_um")
# The excitation volume's axial extent lengthens the texture's correlation along z
# (qdjax.sim.tissue.make_params's texture_z_um): sqrt(2) x a typical sigma_z of 0.6 um.
TEXTURE_AXIAL_BLUR_UM = 0.85
_TISSUE_STREAM = 0x70746973
# Values that must be > 0 (the rest >= 0).
_POSITIVE = ("peak_photons", "background_ratio", "diffusion_um2_s", "sigma_xy_um")
_POSITIVE += ("sigma_z_um", "pixel_size_um", "pmt_alpha", "texture_um", "vessel_width_um")


@dataclasses.dataclass(frozen=True)
class Prior:
  """The distribution of training frames (hashable: a static argument of jitted steps).

  Attributes:
    peak_photons: (lo, hi) N, photons per dwell at the focus, log-uniform.
    background_ratio: (lo, hi) B / N, log-uniform.
    background_extra: (lo, hi) photons per pixel added to N * ratio, uniform: a background
      that does not follow the QD's brightness.
    diffusion_um2_s: (lo, hi) D, log-uniform.
    sigma_xy_um, sigma_z_um: (lo, hi) PSF standard deviations, uniform.
    pixel_size_um: (lo, hi) uniform; with sigma_xy it sets the spot's width in pixels
      (sigma_xy / a from 0.8 to 2.9 px: the ``paper`` preset's 2 px, in vivo's 1.0-1.5).
    z_range_um: (lo, hi) uniform: a frame's QDs start at z ~ U(-z_range, z_range).
    margin_px: (lo, hi) uniform start margin from the frame's edge.
    pmt_fraction: the share of each batch recorded by the PMT (the rest: Poisson photons).
    pmt_alpha: (lo, hi) Gamma rate per output unit, log-uniform (gain = 3 / alpha).
    pmt_dark_sigma: (lo, hi) dark noise standard deviation, output units, log-uniform.
    pmt_offset: (lo, hi) dark offset, output units, uniform.
    frame_sizes: ((h, w), ...): step s uses ``frame_sizes[s % len(frame_sizes)]``; repeat a
      size to give it more steps. Each size is one more compilation of the training step
      (tens of seconds), so the default is two: the study's crops and a 64 x 64 field
      (the detector is fully convolutional and local; the field teaches several QDs, edges
      and a per-frame normalisation over mostly background).
    particles_per_px: a frame of area h * w holds 0 .. max(min_max_particles,
      round(h * w * particles_per_px)) QDs, uniform.
    min_max_particles: the smallest upper bound of the QD count.
    reference_area: px; each step's presence loss (a sum over pixels) is scaled by
      reference_area / (h * w), so a step of large frames does not take a larger SGD step.
    tissue_fraction: the probability that a frame has tissue motion and a structured
      background (``qdjax.sim.tissue``); 0 (the default): none, as before they existed.
    texture_cv: (lo, hi) relative sd of the texture, uniform.
    texture_um: (lo, hi) its correlation length, um, log-uniform.
    vessel_fraction: the probability that a tissue frame shows a vessel edge.
    vessel_contrast: (lo, hi) its relative brightness, uniform.
    vessel_width_um: (lo, hi) its FWHM, um, log-uniform; its direction is uniform and its
      centre line within a quarter of the frame's width of the centre.
    gradient_per_um: (lo, hi) the gradient's size, relative change per um, uniform, in a
      uniform direction.
    breathing_um, heartbeat_um: (lo, hi) amplitude, um, uniform per axis.
    breathing_hz, heartbeat_hz: (lo, hi) frequency, Hz, uniform.
    drift_um_s: (lo, hi) drift speed per axis, um/s, uniform, with a random sign.
  """

  peak_photons: tuple[float, float] = (1.5, 40.0)
  background_ratio: tuple[float, float] = (0.02, 1.5)
  background_extra: tuple[float, float] = (0.0, 0.5)
  diffusion_um2_s: tuple[float, float] = (0.05, 20.0)
  sigma_xy_um: tuple[float, float] = (0.17, 0.26)
  sigma_z_um: tuple[float, float] = (0.5, 0.8)
  pixel_size_um: tuple[float, float] = (0.09, 0.22)
  z_range_um: tuple[float, float] = (0.2, 0.6)
  margin_px: tuple[float, float] = (0.0, 2.0)
  pmt_fraction: float = 0.5
  pmt_alpha: tuple[float, float] = (0.25, 0.8)
  pmt_dark_sigma: tuple[float, float] = (2.0, 20.0)
  pmt_offset: tuple[float, float] = (-10.0, 100.0)
  frame_sizes: tuple[tuple[int, int], ...] = ((24, 25), (64, 64))
  particles_per_px: float = 1 / 400
  min_max_particles: int = 2
  reference_area: int = 600
  tissue_fraction: float = 0.0
  texture_cv: tuple[float, float] = (0.1, 0.8)
  texture_um: tuple[float, float] = (0.2, 1.0)
  vessel_fraction: float = 0.3
  vessel_contrast: tuple[float, float] = (0.3, 2.0)
  vessel_width_um: tuple[float, float] = (0.3, 2.0)
  gradient_per_um: tuple[float, float] = (0.0, 0.05)
  breathing_um: tuple[float, float] = (0.0, 1.5)
  breathing_hz: tuple[float, float] = (1.0, 3.0)
  heartbeat_um: tuple[float, float] = (0.0, 0.5)
  heartbeat_hz: tuple[float, float] = (5.0, 10.0)
  drift_um_s: tuple[float, float] = (0.0, 0.5)

  def __post_init__(self):
    check(self)

  def frame_size(self, step: int) -> tuple[int, int]:
    """(height, width) of the frames of training step ``step``."""
    return self.frame_sizes[int(step) % len(self.frame_sizes)]

  def max_particles(self, height: int, width: int) -> int:
    """The most QDs a frame of this size holds."""
    return max(self.min_max_particles, round(height * width * self.particles_per_px))

  def to_dict(self) -> dict[str, Any]:
    """Plain-Python values (lists for ranges), for JSON records."""
    return json_ready(dataclasses.asdict(self))


def json_ready(value):
  if isinstance(value, dict):
    return {k: json_ready(v) for k, v in value.items()}
  if isinstance(value, (tuple, list)):
    return [json_ready(v) for v in value]
  return value


def check(prior: Prior) -> None:
  """Raises ValueError naming the first bad value of a ``Prior``."""
  for name in RANGES + TISSUE_RANGES:
    value = getattr(prior, name)
    try:
      lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
      raise ValueError(f"prior.{name} must be a (lo, hi) pair, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
      raise ValueError(f"prior.{name} must be finite, got {value!r}")
    if hi < lo:
      raise ValueError(f"prior.{name} must have lo <= hi, got {value!r}")
    if (lo < 0 and name != "pmt_offset") or (name in _POSITIVE and lo <= 0):
      bound = "> 0" if name in _POSITIVE else ">= 0"
      raise ValueError(f"prior.{name} must be {bound}, got {value!r}")
  for name in ("pmt_fraction", "tissue_fraction", "vessel_fraction"):
    if not 0 <= getattr(prior, name) <= 1:
      raise ValueError(f"prior.{name} must be in [0, 1], got {getattr(prior, name)}")
  if not prior.frame_sizes:
    raise ValueError("prior.frame_sizes is empty")
  for size in prior.frame_sizes:
    if len(size) != 2 or any(not isinstance(v, int) or v < 1 for v in size):
      raise ValueError(f"prior.frame_sizes: {size!r} is not a (height, width) of ints >= 1")
    if min(size) - 1 - 2 * prior.margin_px[1] < 0:
      raise ValueError(f"prior.margin_px={prior.margin_px[1]} leaves no room in a {size} frame")
  if not (prior.particles_per_px >= 0 and math.isfinite(prior.particles_per_px)):
    raise ValueError(f"prior.particles_per_px must be >= 0, got {prior.particles_per_px}")
  if prior.min_max_particles < 0:
    raise ValueError(f"prior.min_max_particles must be >= 0, got {prior.min_max_particles}")
  if prior.reference_area < 1:
    raise ValueError(f"prior.reference_area must be >= 1, got {prior.reference_area}")


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
  """'24x25,64x64' -> ((24, 25), (64, 64)).

  Raises:
    ValueError: naming the bad text.
  """
  sizes = []
  for part in str(text).split(","):
    try:
      h, w = (int(v) for v in part.strip().lower().split("x"))
    except ValueError:
      raise ValueError(f"frame sizes must look like '24x25,64x64', got {text!r}") from None
    sizes.append((h, w))
  return tuple(sizes)


def config():
  """The ``prior`` block of a training config: the defaults of ``Prior``, one per line."""
  from ml_collections import config_dict

  defaults = Prior()
  block = config_dict.ConfigDict()
  block.peak_photons = defaults.peak_photons  # N, photons per dwell at focus, log-uniform
  block.background_ratio = defaults.background_ratio  # B / N, log-uniform
  block.background_extra = defaults.background_extra  # photons added to B, uniform
  block.diffusion_um2_s = defaults.diffusion_um2_s  # D um^2/s, log-uniform
  block.sigma_xy_um = defaults.sigma_xy_um  # lateral PSF sd, um, uniform
  block.sigma_z_um = defaults.sigma_z_um  # axial PSF sd, um, uniform
  block.pixel_size_um = defaults.pixel_size_um  # pixel size, um, uniform
  block.z_range_um = defaults.z_range_um  # QDs start at z ~ U(-z_range, z_range), uniform
  block.margin_px = defaults.margin_px  # start margin from the edge, px, uniform
  block.pmt_fraction = defaults.pmt_fraction  # share of each batch recorded by a PMT
  block.pmt_alpha = defaults.pmt_alpha  # PMT Gamma rate (gain 3/alpha), log-uniform
  block.pmt_dark_sigma = defaults.pmt_dark_sigma  # PMT dark noise sd, output units
  block.pmt_offset = defaults.pmt_offset  # PMT dark offset, output units, uniform
  block.frame_sizes = "24x25,64x64"  # HxW cycled by step (repeat one to weight it)
  block.particles_per_px = defaults.particles_per_px  # max QDs per frame per px of area
  block.min_max_particles = defaults.min_max_particles  # a frame may hold at least 0..this
  block.reference_area = defaults.reference_area  # presence loss scaled by this / (h*w)
  block.tissue_fraction = defaults.tissue_fraction  # share of frames with tissue (0: none)
  block.texture_cv = defaults.texture_cv  # texture's relative sd, uniform
  block.texture_um = defaults.texture_um  # texture's correlation length, um, log-uniform
  block.vessel_fraction = defaults.vessel_fraction  # share of tissue frames with a vessel
  block.vessel_contrast = defaults.vessel_contrast  # vessel band's relative brightness
  block.vessel_width_um = defaults.vessel_width_um  # vessel band's FWHM, um, log-uniform
  block.gradient_per_um = defaults.gradient_per_um  # background gradient, relative per um
  block.breathing_um = defaults.breathing_um  # breathing amplitude per axis, um
  block.breathing_hz = defaults.breathing_hz  # breathing frequency, Hz
  block.heartbeat_um = defaults.heartbeat_um  # heartbeat amplitude per axis, um
  block.heartbeat_hz = defaults.heartbeat_hz  # heart rate, Hz
  block.drift_um_s = defaults.drift_um_s  # drift speed per axis, um/s, random sign
  return block


def from_config(block) -> Prior:
  """A validated ``Prior`` from a config's ``prior`` block.

  Raises:
    ValueError: naming the first bad value.
  """
  values = dict(block)
  unknown = sorted(set(values) - {f.name for f in dataclasses.fields(Prior)})
  if unknown:
    raise ValueError(f"unknown prior setting(s): {', '.join(unknown)}")
  if isinstance(values.get("frame_sizes"), str):
    values["frame_sizes"] = parse_sizes(values["frame_sizes"])
  else:
    values["frame_sizes"] = tuple(tuple(s) for s in values["frame_sizes"])
  for name in RANGES + TISSUE_RANGES:
    if name in values:
      values[name] = tuple(values[name])
  return Prior(**values)


def sample_values(key, prior: Prior, num_frames: int) -> dict[str, jax.Array]:
  """One value per frame of every drawn quantity.

  Returns:
    dict name -> [num_frames] float32: each name of ``RANGES``, and ``background_photons``.
  """
  keys = jax.random.split(key, len(RANGES))
  values = {}
  for name, k in zip(RANGES, keys, strict=True):
    lo, hi = getattr(prior, name)
    u = jax.random.uniform(k, (num_frames,))
    if name in LOG_UNIFORM:
      values[name] = lo * (hi / lo) ** u
    else:
      values[name] = lo + (hi - lo) * u
  values["background_photons"] = (
    values["peak_photons"] * values["background_ratio"] + values["background_extra"]
  )
  return values


def sample_tissue(key, prior: Prior, num_frames: int, width_um) -> tissue_lib.Tissue:
  """One frame's tissue per frame: a ``tissue.Tissue`` whose leaves lead with
  [num_frames]. A frame has tissue with probability ``tissue_fraction`` (the others: no
  motion and the flat background) and, if so, a vessel with ``vessel_fraction``.

  Args:
    width_um: [num_frames] each frame's width, um (where the vessel may run).
  """
  keys = iter(jax.random.split(key, len(TISSUE_RANGES) + 6))
  n = num_frames

  def uniform(name, shape=()):
    lo, hi = getattr(prior, name)
    u = jax.random.uniform(next(keys), (n, *shape))
    if name in TISSUE_LOG_UNIFORM:
      return lo * (hi / lo) ** u
    return lo + (hi - lo) * u

  on = jax.random.uniform(next(keys), (n,)) < prior.tissue_fraction
  vessel = on & (jax.random.uniform(next(keys), (n,)) < prior.vessel_fraction)
  gradient_angle = jax.random.uniform(next(keys), (n,), maxval=2 * math.pi)
  sign = jnp.where(jax.random.bernoulli(next(keys), 0.5, (n, 3)), 1.0, -1.0)
  vessel_angle = jax.random.uniform(next(keys), (n,), maxval=180.0)
  offset = (jax.random.uniform(next(keys), (n,)) - 0.5) * width_um / 2
  gradient = uniform("gradient_per_um")[:, None] * jnp.stack(
    [jnp.cos(gradient_angle), jnp.sin(gradient_angle)], axis=-1
  )
  scalar = lambda v: jnp.where(on, v, 0.0)
  axes = lambda v: jnp.where(on[:, None], v, 0.0)
  return tissue_lib.Tissue(
    texture_cv=scalar(uniform("texture_cv")),
    texture_um=(texture_um := uniform("texture_um")),
    texture_z_um=jnp.sqrt(texture_um**2 + TEXTURE_AXIAL_BLUR_UM**2),
    vessel_contrast=jnp.where(vessel, uniform("vessel_contrast"), 0.0),
    vessel_width_um=uniform("vessel_width_um"),
    vessel_angle_deg=vessel_angle,
    vessel_offset_um=offset,
    gradient_per_um=axes(gradient),
    breathing_um=axes(uniform("breathing_um", (3,))),
    breathing_hz=uniform("breathing_hz"),
    heartbeat_um=axes(uniform("heartbeat_um", (3,))),
    heartbeat_hz=uniform("heartbeat_hz"),
    drift_um_s=axes(uniform("drift_um_s", (3,)) * sign),
    moving=True,
    structured=True,
  )


# The simulate.Params leaves set per frame from ``sample_values``.
_PHYSICS = ("peak_photons", "background_photons", "sigma_xy_um", "sigma_z_um", "pixel_size_um")
_PHYSICS += ("z_range_um", "margin_px")
_PMT = ("pmt_alpha", "pmt_dark_sigma", "pmt_offset")


def frame_params(
  values, base: simulate.Params, height: int, width: int, max_particles: int, detector_name: str
) -> simulate.Params:
  """Per-frame ``simulate.Params``: every leaf [n], taken from ``values`` where drawn and
  from ``base`` (broadcast) otherwise; the QD count is 0 .. ``max_particles``."""
  n = values["peak_photons"].shape[0]
  params = jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x)), base)
  drawn = {name: values[name] for name in _PHYSICS + _PMT}
  d = values["diffusion_um2_s"]
  drawn["diffusion_um2_s"] = jnp.stack([d, d], axis=-1)  # lo == hi: exactly this D
  return params.replace(
    height=height,
    width=width,
    num_particles=(0, max_particles),
    detector=detector_name,
    **drawn,
  )


def draw(key, prior: Prior, base: simulate.Params, height: int, width: int, num_frames: int):
  """``num_frames`` frames of one size from the prior (traceable; jit it with the ints and
  ``prior`` static).

  The first ``num_frames - round(num_frames * pmt_fraction)`` frames are Poisson photon
  counts, the rest PMT output (``is_pmt``). The physics of all frames is one vmapped
  render; only the detector differs.

  Returns:
    ``simulate.Frame`` with arrays leading [num_frames] and ``max_particles(height,
    width)`` QD slots.
  """
  k_values, k_frames = jax.random.split(key)
  values = sample_values(k_values, prior, num_frames)
  keys = jax.random.split(k_frames, num_frames)
  params = frame_params(values, base, height, width, prior.max_particles(height, width), "pmt")
  if prior.tissue_fraction > 0:
    k_tissue = jax.random.fold_in(k_values, _TISSUE_STREAM)
    width_um = width * values["pixel_size_um"]
    params = params.replace(tissue=sample_tissue(k_tissue, prior, num_frames, width_um))
  frames, noise_keys = simulate.render_noise_free_batch(keys, params, per_frame=True)
  cut = num_frames - round(num_frames * prior.pmt_fraction)
  counts = []
  for name, part in (("poisson", slice(0, cut)), ("pmt", slice(cut, num_frames))):
    if part.stop > part.start:
      sub = jax.tree.map(lambda x, part=part: x[part], params).replace(detector=name)
      counts.append(detector.record_batch(noise_keys[part], frames.expected[part], sub))
  return frames.replace(counts=jnp.concatenate(counts) if len(counts) > 1 else counts[0])


@functools.partial(jax.jit, static_argnums=(1, 3, 4, 5))
def simulate_batch(key, prior: Prior, base: simulate.Params, height: int, width: int, n: int):
  """Jitted ``draw``: for tests, benchmarks and looking at the training frames."""
  return draw(key, prior, base, height, width, n)


def is_pmt(prior: Prior, num_frames: int):
  """[num_frames] bool: which frames of a ``draw`` are PMT output."""
  cut = num_frames - round(num_frames * prior.pmt_fraction)
  return jnp.arange(num_frames) >= cut
