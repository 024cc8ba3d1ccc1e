"""Tissue motion and structured backgrounds (docs/spec.md, section 1, "Tissue").

In vivo the whole sample moves while a raster frame is recorded: breathing, heartbeat and
slow drift. Every sample of the frame sees the tissue where it was at that sample's time,
so QDs and background shear and jitter together, line by line. The tissue's displacement
from its rest position is

    d(t) = A_b sin(2 pi f_b t + phi_b) + A_h sin(2 pi f_h t + phi_h) + v t      [um]

with per-axis amplitudes A_b (breathing), A_h (heartbeat) in um (half the peak-to-peak
excursion), frequencies f in Hz, drift velocity v in um/s and t in seconds from the start
of the movie (or of a single frame). The phases phi are uniform on [0, 2 pi), drawn once
per movie (or frame) from its key. A QD at tissue position p appears at p + d(t).

The background is autofluorescence fixed in the tissue, seen at the beam position minus
d(t) (x, y, z, with the focal plane at z = 0):

    B(r) = B * T(r) * max(0, 1 + g . (r_xy - c)) * (1 + C exp(-4 ln 2 u^2 / W^2))

* T, the texture: a log-normal stationary random field of mean 1 and relative standard
  deviation ``texture_cv``, ``T = exp(s G - log E[exp(s G)])`` with ``s^2 = ln(1 + cv^2)``
  and ``G = sqrt(2/M) sum_m cos(k_m . r + psi_m)``, M (``num_modes``) random Fourier modes
  with ``k_m ~ N(0, diag(1/l^2, 1/l^2, 1/l_z^2))`` (l = ``texture_um`` in the focal plane,
  l_z = ``texture_z_um`` along z) and ``psi_m ~ U[0, 2 pi)``: G has mean 0, variance 1 and
  correlation ``exp(-(dx^2 + dy^2) / (2 l^2) - dz^2 / (2 l_z^2))``. Its normaliser is exact (a
  product of Bessel functions I0), so T's mean is 1 exactly, and its variance is cv^2 up
  to a relative O(cv^2 / M) (0.3% at cv = 0.5, M = 64). The texture is 3D: z motion
  carries the focal plane through it.
* g (``gradient_per_um``): a slow linear gradient, the relative change of B per um along
  x and y about the frame's centre c (so the frame's mean is still B).
* a vessel edge: a bright (C > 0) or dark (-1 <= C < 0) band of relative contrast C
  (``vessel_contrast``), full width at half maximum W (``vessel_width_um``), running at
  ``vessel_angle_deg`` from the x axis, its centre line ``vessel_offset_um`` from c along
  its normal; u is the distance from that line.

B is the frame's ``background_photons``; ``texture_cv = 0`` without vessel or gradient
is the flat background B. Everything is differentiable in positions and values.

    tissue = make_params(breathing_um=(0, 1.0, 0.3), breathing_hz=1.5, texture_cv=0.5)

Which parts run is static (``moving``, ``structured``; set by ``make_params`` from the
values), so a movie without tissue motion or texture runs exactly the code it ran before
they existed; every number is a traced leaf.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.scipy.special import i0e

from qdjax.sim import scan

NUM_MODES = 64
# fold_in data of a movie's (or frame's) tissue draws: a stream of their own, so the other
# draws, and movies without tissue, stay as they were.
STREAM = 0x746973


@struct.dataclass
class Tissue:
  """Tissue motion and background structure. Build with ``make_params``, which validates.

  Attributes:
    breathing_um: [3] breathing amplitude per axis (x, y, z), um.
    breathing_hz: [] breathing frequency, Hz.
    heartbeat_um: [3] heartbeat amplitude per axis, um.
    heartbeat_hz: [] heart rate, Hz.
    drift_um_s: [3] drift velocity, um/s.
    texture_cv: [] relative standard deviation of the texture (0: none).
    texture_um: [] its correlation length in the focal plane (x, y), um.
    texture_z_um: [] its correlation length along z (the optical axis), um.
    vessel_contrast: [] relative brightness of the vessel band (0: none; >= -1).
    vessel_width_um: [] its full width at half maximum, um.
    vessel_angle_deg: [] its direction, degrees from the x axis.
    vessel_offset_um: [] its centre line's distance from the frame's centre, um.
    gradient_per_um: [2] relative change of the background per um along x and y.
    moving: the displacement is used (static).
    structured: the background is the structured one, not the flat B (static).
    num_modes: Fourier modes of the texture (static).
  """

  breathing_um: Any
  breathing_hz: Any
  heartbeat_um: Any
  heartbeat_hz: Any
  drift_um_s: Any
  texture_cv: Any
  texture_um: Any
  texture_z_um: Any
  vessel_contrast: Any
  vessel_width_um: Any
  vessel_angle_deg: Any
  vessel_offset_um: Any
  gradient_per_um: Any
  moving: bool = struct.field(pytree_node=False, default=False)
  structured: bool = struct.field(pytree_node=False, default=False)
  num_modes: int = struct.field(pytree_node=False, default=NUM_MODES)

  def to_dict(self) -> dict[str, Any]:
    """Plain-Python values for JSON records (per-axis values as lists)."""
    out = {}
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if f.name in ("moving", "structured", "num_modes"):
        out[f.name] = value
      elif np.ndim(value):
        out[f.name] = [_round32(v) for v in np.asarray(value).reshape(-1)]
      else:
        out[f.name] = _round32(value)
    return out


def _round32(value) -> float:
  return float(f"{float(value):.7g}")


@dataclasses.dataclass(frozen=True)
class Vessel:
  """A vessel edge as a user writes it: contrast C, FWHM width (um), direction (degrees
  from the x axis) and offset of its centre line from the frame's centre (um)."""

  contrast: float
  width_um: float = 1.0
  angle_deg: float = 90.0
  offset_um: float = 0.0


def parse_vessel(text: str) -> Vessel:
  """``CONTRAST[:WIDTH_UM[:ANGLE_DEG[:OFFSET_UM]]]`` -> Vessel.

  Raises:
    ValueError: naming the text.
  """
  parts = str(text).split(":")
  try:
    values = [float(v) for v in parts]
  except ValueError:
    values = []
  if not 1 <= len(values) <= 4:
    raise ValueError(f"vessel must be contrast[:width_um[:angle_deg[:offset_um]]], got {text!r}")
  return Vessel(*values)


def _vector(name: str, value, size: int) -> np.ndarray:
  """A number (the same on every axis) or ``size`` numbers, all finite."""
  try:
    array = np.broadcast_to(np.asarray(value, np.float64), (size,))
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a number or {size} numbers, got {value!r}") from None
  if not np.all(np.isfinite(array)):
    raise ValueError(f"{name} must be finite, got {value!r}")
  return array


def _number(name: str, value, lo: float | None = None, positive: bool = False) -> float:
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a number, got {value!r}") from None
  if not math.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value}")
  if positive and value <= 0:
    raise ValueError(f"{name} must be > 0, got {value}")
  if lo is not None and value < lo:
    raise ValueError(f"{name} must be >= {lo:g}, got {value}")
  return value


def make_params(
  *,
  breathing_um=0.0,
  breathing_hz: float = 1.5,
  heartbeat_um=0.0,
  heartbeat_hz: float = 7.0,
  drift_um_s=0.0,
  texture_cv: float = 0.0,
  texture_um: float = 0.4,
  texture_z_um: float | None = None,
  vessel: Vessel | float | dict | str | None = None,
  gradient_per_um=0.0,
  num_modes: int = NUM_MODES,
) -> Tissue:
  """Validated ``Tissue``; the defaults are no motion and a flat background.

  Args:
    breathing_um, heartbeat_um: amplitude (half peak-to-peak) per axis (x, y, z), um: one
      number (the same on all three axes) or three.
    breathing_hz, heartbeat_hz: frequencies, Hz (>= 0).
    drift_um_s: drift velocity, um/s, one number or three.
    texture_cv: relative standard deviation of the log-normal texture (>= 0; 0: none).
    texture_um: its correlation length in the focal plane, um (> 0).
    texture_z_um: its correlation length along z, um (> 0; default ``texture_um``). The
      background a two-photon microscope sees is the tissue blurred by its excitation
      volume, much longer along z (sd ``sigma_z_um``) than across, so z motion changes it
      more slowly than in-plane motion of the same size.
    vessel: None (none), a contrast, a ``Vessel``, its fields as a dict, or its text
      (``parse_vessel``).
    gradient_per_um: relative change of the background per um along (x, y), one number or
      two.
    num_modes: Fourier modes of the texture.

  Raises:
    ValueError: naming the first bad value.
  """
  breathing = _vector("breathing_um", breathing_um, 3)
  heartbeat = _vector("heartbeat_um", heartbeat_um, 3)
  drift = _vector("drift_um_s", drift_um_s, 3)
  gradient = _vector("gradient_per_um", gradient_per_um, 2)
  breathing_hz = _number("breathing_hz", breathing_hz, lo=0.0)
  heartbeat_hz = _number("heartbeat_hz", heartbeat_hz, lo=0.0)
  texture_cv = _number("texture_cv", texture_cv, lo=0.0)
  texture_um = _number("texture_um", texture_um, positive=True)
  texture_z_um = texture_um if texture_z_um is None else texture_z_um
  texture_z_um = _number("texture_z_um", texture_z_um, positive=True)
  if vessel is None:
    vessel = Vessel(0.0)
  elif isinstance(vessel, str):
    vessel = parse_vessel(vessel)
  elif isinstance(vessel, dict):
    vessel = Vessel(**vessel)
  elif not isinstance(vessel, Vessel):
    vessel = Vessel(float(vessel))
  contrast = _number("vessel contrast", vessel.contrast, lo=-1.0)
  width = _number("vessel width_um", vessel.width_um, positive=True)
  angle = _number("vessel angle_deg", vessel.angle_deg)
  offset = _number("vessel offset_um", vessel.offset_um)
  if not isinstance(num_modes, int) or isinstance(num_modes, bool) or num_modes < 1:
    raise ValueError(f"num_modes must be an integer >= 1, got {num_modes!r}")
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  return Tissue(
    breathing_um=f32(breathing),
    breathing_hz=f32(breathing_hz),
    heartbeat_um=f32(heartbeat),
    heartbeat_hz=f32(heartbeat_hz),
    drift_um_s=f32(drift),
    texture_cv=f32(texture_cv),
    texture_um=f32(texture_um),
    texture_z_um=f32(texture_z_um),
    vessel_contrast=f32(contrast),
    vessel_width_um=f32(width),
    vessel_angle_deg=f32(angle),
    vessel_offset_um=f32(offset),
    gradient_per_um=f32(gradient),
    moving=bool(np.any(breathing) or np.any(heartbeat) or np.any(drift)),
    structured=bool(texture_cv > 0 or contrast != 0 or np.any(gradient)),
    num_modes=num_modes,
  )


@struct.dataclass
class Draw:
  """What a movie (or frame) draws once for its tissue.

  Attributes:
    phases: [2] breathing and heartbeat phases, radians.
    directions: [M, 3] the texture's wave vectors times its correlation lengths (x, y:
      ``texture_um``, z: ``texture_z_um``; standard normal).
    mode_phases: [M] the modes' phases, radians.
  """

  phases: jax.Array
  directions: jax.Array
  mode_phases: jax.Array


def draw(key, tissue: Tissue) -> Draw:
  """Phases of the motion and modes of the texture, from ``key``."""
  k_phase, k_direction, k_mode = jax.random.split(key, 3)
  m = tissue.num_modes
  return Draw(
    phases=jax.random.uniform(k_phase, (2,), maxval=2 * math.pi),
    directions=jax.random.normal(k_direction, (m, 3)),
    mode_phases=jax.random.uniform(k_mode, (m,), maxval=2 * math.pi),
  )


def displacement(tissue: Tissue, phases, t):
  """d(t), the tissue's displacement.

  Args:
    tissue: the motion.
    phases: [2] breathing and heartbeat phases (``Draw.phases``), radians.
    t: [...] seconds from the movie's (or frame's) start.

  Returns:
    [..., 3] um (x, y, z).
  """
  t = jnp.asarray(t)[..., None]
  breathing = jnp.sin(2 * math.pi * tissue.breathing_hz * t + phases[0])
  heartbeat = jnp.sin(2 * math.pi * tissue.heartbeat_hz * t + phases[1])
  return tissue.breathing_um * breathing + tissue.heartbeat_um * heartbeat + tissue.drift_um_s * t


def _log_i0(z):
  return jnp.log(i0e(z)) + jnp.abs(z)


def texture(tissue: Tissue, modes: Draw, points_um):
  """The log-normal texture T (mean 1, relative sd ``texture_cv``) at tissue positions.

  Args:
    points_um: [..., 3] um in the tissue's frame.

  Returns:
    [...] relative brightness.
  """
  m = tissue.num_modes
  s = jnp.sqrt(jnp.log1p(tissue.texture_cv**2))
  lengths = jnp.stack([tissue.texture_um, tissue.texture_um, tissue.texture_z_um], axis=-1)
  wave = modes.directions / lengths[..., None, :]  # [M, 3] rad/um
  phase = jnp.einsum("...i,mi->...m", points_um, wave, precision="highest") + modes.mode_phases
  field = math.sqrt(2.0 / m) * jnp.cos(phase).sum(axis=-1)
  # E[exp(s G)] = I0(s sqrt(2/M))^M for M independent uniform phases: the mean is exactly 1.
  value = jnp.exp(s * field - m * _log_i0(s * math.sqrt(2.0 / m)))
  # Without texture exactly 1 (float32's I0(0) is a few ulp off), so the flat B is exact.
  return jnp.where(tissue.texture_cv > 0, value, 1.0)


def brightness(tissue: Tissue, modes: Draw, points_um, centre_um):
  """Relative background brightness B(r)/B: texture, gradient and vessel.

  Args:
    points_um: [..., 3] um in the tissue's frame.
    centre_um: [2] the frame's centre (x, y), um.

  Returns:
    [...] >= 0.
  """
  xy = points_um[..., :2] - centre_um
  slope = jnp.maximum(0.0, 1.0 + xy @ tissue.gradient_per_um)
  angle = jnp.deg2rad(tissue.vessel_angle_deg)
  normal = jnp.stack([-jnp.sin(angle), jnp.cos(angle)])
  u = xy @ normal - tissue.vessel_offset_um
  band = jnp.exp(-4 * math.log(2) * u**2 / tissue.vessel_width_um**2)
  return texture(tissue, modes, points_um) * slope * (1.0 + tissue.vessel_contrast * band)


def beam_points_um(frame):
  """Where the beam is at every sample: [h, w, K, 3] um (x, y, z = 0)."""
  x_start, x_end = scan.beam_sweep_um(frame.width, frame.substeps, frame.pixel_size_um)
  x = jnp.broadcast_to((x_start + x_end) / 2, (frame.height, frame.width, frame.substeps))
  y = jnp.broadcast_to(scan.beam_rows_um(frame.height, frame.pixel_size_um)[:, None, None], x.shape)
  return jnp.stack([x, y, jnp.zeros_like(x)], axis=-1)


def frame_centre_um(frame):
  """(x, y) of the frame's centre, um."""
  a = frame.pixel_size_um
  return jnp.stack([(frame.width - 1) / 2 * a, (frame.height - 1) / 2 * a])


def line_times(frame, start_s=0.0):
  """The middle of each line's recording (the mean of its sample times): [h] s."""
  line = scan.line_period(frame.width, frame.dwell_s, frame.retrace_s)
  rows = jnp.arange(frame.height, dtype=jnp.float32)
  return start_s + rows * line + frame.width * frame.dwell_s / 2


def observe(tissue: Tissue, modes: Draw, frame, positions, start_s=0.0):
  """A frame as the moving tissue shows it.

  Args:
    tissue: motion and background.
    modes: the movie's (or frame's) ``draw``.
    frame: the frame's ``simulate.Params``.
    positions: [P, h, w, K, 3] um, the QDs' paths in the tissue's frame.
    start_s: the frame's start, s from the movie's start.

  Returns:
    (seen [P, h, w, K, 3] um: where the QDs appear, ``positions`` + d(t) at each sample;
    background [h, w] expected background photons, or None for the flat B;
    line_um [h, 3] d at the middle of each line).
  """
  h, w, k = frame.height, frame.width, frame.substeps
  times = start_s + scan.sample_times(h, w, k, frame.dwell_s, frame.retrace_s)
  line_um = displacement(tissue, modes.phases, line_times(frame, start_s))
  if tissue.moving:
    shift = displacement(tissue, modes.phases, times)  # [h, w, K, 3]
    seen = positions + shift
  else:
    shift, seen = None, positions
    line_um = jnp.zeros_like(line_um)
  background = None
  if tissue.structured:
    points = beam_points_um(frame)
    if shift is not None:
      points = points - shift
    relative = brightness(tissue, modes, points, frame_centre_um(frame))
    background = frame.background_photons * relative.mean(axis=-1)
  return seen, background, line_um
