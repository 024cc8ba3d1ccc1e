"""How each QD of a movie moves: a mixture of motion populations (docs/spec.md, section 8).

A movie's QDs are drawn, each independently, from populations given as fractions:

* ``free``: 3D Brownian motion.
* ``confined``: 3D Brownian motion inside a reflecting sphere of ``radius_um``, centred so
  that the QD starts uniformly inside it (its stationary distribution). A step that leaves
  the sphere is mirrored back across it along the radius, at every sample of the path;
  the longer steps, across a line's retrace and an unrecorded gap, are taken in small
  reflected pieces (``RETRACE_SUBSTEPS``, ``GAP_SUBSTEPS``), so positions stay uniform in
  the ball (``<x^2> = a^2 / 5`` per axis; the MSD in x, y plateaus at ``4 a^2 / 5``).
* ``immobile``: D = 0; the true path stays where it starts.
* ``directed``: Brownian motion plus a constant velocity of ``speed_um_s`` in a uniformly
  random direction in the imaging (x, y) plane.

Each population's D (not for ``immobile``) is a fixed value, or log-normal per QD with
median ``diffusion_um2_s`` and ``diffusion_sigma`` the standard deviation of ln D; a
population without a D takes the movie's D (the frame parameters' ``diffusion_um2_s``,
drawn once per movie), as every QD did before populations existed. Several ``free``
populations give a discrete set of D values with weights.

    motion = make_motion([Population("free", 0.7, 0.05, diffusion_sigma=0.3),
                          Population("confined", 0.3, 0.3, radius_um=0.2)])
    params = movie.make_params(frame, 100, motion=motion)

The default, ``make_motion()``, is one free population at the movie's D, and gives the
same movies, bit for bit, as the simulator before populations. Everything here is pure
and keyed; the kinds are static (they choose which code runs), every number is a traced
leaf.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

KINDS = ("free", "confined", "immobile", "directed")

# Steps of a confined QD through a line's retrace and through an unrecorded gap between
# frames, each reflected: the reflection is exact only for steps small against the radius.
RETRACE_SUBSTEPS = 16
GAP_SUBSTEPS = 256
# After a gap with D t > this many radius^2 (about 13 relaxation times a^2 / (4.33 D)) the
# QD has forgotten where it was: it is drawn anew, uniformly in its sphere.
FORGOTTEN_D_T = 3.0


@dataclasses.dataclass(frozen=True)
class Population:
  """One motion population, as a user writes it.

  Attributes:
    kind: one of ``KINDS``.
    fraction: the probability that a QD belongs to it, in [0, 1].
    diffusion_um2_s: median D, um^2/s; None: the movie's D. Ignored (0) for ``immobile``.
    diffusion_sigma: standard deviation of ln D across the population's QDs; 0: all have
      the median.
    radius_um: the confining sphere's radius (``confined`` only, required there).
    speed_um_s: the drift speed (``directed`` only, required there).
  """

  kind: str
  fraction: float
  diffusion_um2_s: float | None = None
  diffusion_sigma: float = 0.0
  radius_um: float | None = None
  speed_um_s: float | None = None

  def to_dict(self) -> dict[str, Any]:
    """The population for JSON records (None where not given or not applicable)."""
    return dataclasses.asdict(self)


@struct.dataclass
class Motion:
  """The populations as arrays over K populations. Build with ``make_motion``."""

  fraction: Any  # [K]
  diffusion_um2_s: Any  # [K] median D; ignored where movie_diffusion
  movie_diffusion: Any  # [K] bool: the population takes the movie's D
  diffusion_sigma: Any  # [K] sd of ln D
  radius_um: Any  # [K] sphere radius; inf where not confined
  speed_um_s: Any  # [K] drift speed; 0 where not directed
  kinds: tuple[str, ...] = struct.field(pytree_node=False, default=("free",))

  def populations(self) -> list[Population]:
    """The populations back as ``Population`` values (for records)."""
    out = []
    for i, kind in enumerate(self.kinds):
      d = None if bool(self.movie_diffusion[i]) else _round32(self.diffusion_um2_s[i])
      out.append(
        Population(
          kind=kind,
          fraction=_round32(self.fraction[i]),
          diffusion_um2_s=None if kind == "immobile" else d,
          diffusion_sigma=_round32(self.diffusion_sigma[i]),
          radius_um=_round32(self.radius_um[i]) if kind == "confined" else None,
          speed_um_s=_round32(self.speed_um_s[i]) if kind == "directed" else None,
        )
      )
    return out


def _round32(value) -> float:
  return float(f"{float(value):.7g}")


DEFAULT = (Population("free", 1.0),)


def make_motion(populations: Sequence[Population] = DEFAULT) -> Motion:
  """Validated ``Motion`` from populations whose fractions sum to 1.

  Raises:
    ValueError: naming the first bad population and value.
  """
  populations = tuple(populations)
  if not populations:
    raise ValueError("give at least one motion population")
  for i, pop in enumerate(populations):
    _check_population(i, pop)
  total = sum(float(p.fraction) for p in populations)
  if abs(total - 1.0) > 1e-3:
    raise ValueError(f"population fractions must sum to 1, got {total:.6g}")

  def column(values, dtype=jnp.float32):
    return jnp.asarray(np.asarray(values), dtype)

  return Motion(
    fraction=column([p.fraction / total for p in populations]),
    diffusion_um2_s=column(
      [0.0 if p.diffusion_um2_s is None else p.diffusion_um2_s for p in populations]
    ),
    movie_diffusion=column(
      [p.diffusion_um2_s is None and p.kind != "immobile" for p in populations], bool
    ),
    diffusion_sigma=column([p.diffusion_sigma for p in populations]),
    radius_um=column([p.radius_um if p.kind == "confined" else math.inf for p in populations]),
    speed_um_s=column([p.speed_um_s if p.kind == "directed" else 0.0 for p in populations]),
    kinds=tuple(p.kind for p in populations),
  )


def _check_population(i: int, pop: Population) -> None:
  where = f"population {i + 1} ({pop.kind})"
  if pop.kind not in KINDS:
    raise ValueError(
      f"population {i + 1}: kind must be one of {', '.join(KINDS)}, got {pop.kind!r}"
    )

  def number(name, value, positive=False):
    try:
      value = float(value)
    except (TypeError, ValueError):
      raise ValueError(f"{where}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
      bound = "> 0" if positive else ">= 0"
      raise ValueError(f"{where}: {name} must be finite and {bound}, got {value}")
    return value

  if number("fraction", pop.fraction) > 1:
    raise ValueError(f"{where}: fraction must be <= 1, got {pop.fraction}")
  if pop.diffusion_um2_s is not None:
    if pop.kind == "immobile":
      raise ValueError(f"{where}: an immobile QD has D = 0; give no D")
    median = number("D", pop.diffusion_um2_s)
    if median == 0 and float(pop.diffusion_sigma) > 0:
      raise ValueError(f"{where}: a log-normal D needs a median > 0")
  number("sigma", pop.diffusion_sigma)
  if pop.kind == "confined":
    if pop.radius_um is None:
      raise ValueError(f"{where}: give the confining radius")
    number("radius", pop.radius_um, positive=True)
  elif pop.radius_um is not None:
    raise ValueError(f"{where}: only a confined population has a radius")
  if pop.kind == "directed":
    if pop.speed_um_s is None:
      raise ValueError(f"{where}: give the speed")
    number("speed", pop.speed_um_s)
  elif pop.speed_um_s is not None:
    raise ValueError(f"{where}: only a directed population has a speed")


def parse_populations(text: str) -> tuple[Population, ...]:
  """Populations from text a microscopist can read and write.

  Comma-separated populations, each ``kind:fraction`` followed by ``:name=value`` items:
  ``D`` (median D, um^2/s; default the movie's D), ``sigma`` (sd of ln D; default 0),
  ``radius`` (um, confined) and ``speed`` (um/s, directed). For example
  ``free:0.6:D=0.05:sigma=0.5,confined:0.2:D=0.3:radius=0.2,immobile:0.1,directed:0.1:speed=2``.

  Raises:
    ValueError: naming the population and item that cannot be read.
  """
  names = {"D": "diffusion_um2_s", "sigma": "diffusion_sigma", "radius": "radius_um"}
  names["speed"] = "speed_um_s"
  out = []
  for i, part in enumerate(str(text).split(",")):
    items = [item.strip() for item in part.split(":")]
    if len(items) < 2 or not items[0]:
      raise ValueError(
        f"population {i + 1} must be kind:fraction[:name=value...], got {part.strip()!r}"
      )
    try:
      fraction = float(items[1])
    except ValueError:
      raise ValueError(f"population {i + 1}: fraction must be a number, got {items[1]!r}") from None
    values = {}
    for item in items[2:]:
      name, sep, value = item.partition("=")
      if not sep or name.strip() not in names:
        raise ValueError(
          f"population {i + 1}: expected D=, sigma=, radius= or speed=, got {item!r}"
        )
      try:
        values[names[name.strip()]] = float(value)
      except ValueError:
        raise ValueError(f"population {i + 1}: {name} must be a number, got {value!r}") from None
    pop = Population(kind=items[0], fraction=fraction, **values)
    _check_population(i, pop)
    out.append(pop)
  return tuple(out)


@struct.dataclass
class QDMotion:
  """Each QD's motion: the ground truth of how it moved.

  Attributes:
    population: [P] int, index of the QD's population.
    kind: [P] int, index into ``KINDS``.
    diffusion_um2_s: [P] its D (0 for immobile).
    radius_um: [P] its sphere's radius; NaN where not confined.
    velocity_um_s: [P, 2] its (vx, vy) drift; 0 where not directed.
    center_um: [P, 3] its sphere's centre; NaN where not confined.
  """

  population: jax.Array
  kind: jax.Array
  diffusion_um2_s: jax.Array
  radius_um: jax.Array
  velocity_um_s: jax.Array
  center_um: jax.Array


def sample(key, motion: Motion, movie_diffusion, start) -> QDMotion:
  """Draws each QD's population, D, drift direction and sphere.

  Args:
    key: PRNG key.
    motion: the populations.
    movie_diffusion: [] the movie's D, um^2/s.
    start: [P, 3] start positions, um.
  """
  p = start.shape[0]
  k_pop, k_d, k_dir, k_center = jax.random.split(key, 4)
  if len(motion.kinds) == 1:
    population = jnp.zeros(p, jnp.int32)
  else:
    population = jax.random.categorical(k_pop, jnp.log(motion.fraction), shape=(p,))
  codes = jnp.asarray([KINDS.index(k) for k in motion.kinds], jnp.int32)
  kind = codes[population]
  median = jnp.where(motion.movie_diffusion, movie_diffusion, motion.diffusion_um2_s)
  spread = motion.diffusion_sigma[population] * jax.random.normal(k_d, (p,))
  diffusion = median[population] * jnp.exp(spread)
  diffusion = jnp.where(kind == KINDS.index("immobile"), 0.0, diffusion)
  angle = jax.random.uniform(k_dir, (p,), maxval=2 * math.pi)
  velocity = motion.speed_um_s[population][:, None] * jnp.stack(
    [jnp.cos(angle), jnp.sin(angle)], axis=-1
  )
  confined = kind == KINDS.index("confined")
  radius = jnp.where(confined, motion.radius_um[population], jnp.nan)
  # The QD starts uniformly inside its sphere: the centre is the start minus a uniform
  # point of the ball.
  offset = _uniform_in_ball(k_center, radius)
  return QDMotion(
    population=population,
    kind=kind,
    diffusion_um2_s=diffusion,
    radius_um=radius,
    velocity_um_s=velocity,
    center_um=jnp.where(confined[:, None], start - offset, jnp.nan),
  )


def _uniform_in_ball(key, radius):
  """[P, 3] points uniform in balls of the given radii [P] about the origin."""
  k_direction, k_radius = jax.random.split(key)
  direction = jax.random.normal(k_direction, radius.shape + (3,))
  direction = direction / jnp.linalg.norm(direction, axis=-1, keepdims=True)
  return direction * (radius * jax.random.uniform(k_radius, radius.shape) ** (1 / 3))[:, None]


def _velocity3(qd: QDMotion):
  return jnp.concatenate([qd.velocity_um_s, jnp.zeros_like(qd.velocity_um_s[:, :1])], axis=-1)


def reflect(position, center, radius):
  """Mirrors points outside a sphere back across it along the radius.

  A point at distance r > radius from the centre goes to ``2 radius - r`` (folded again
  for steps longer than the radius, so it always lands inside).

  Args:
    position: [..., 3] um.
    center: [..., 3] um.
    radius: [...] um; inf (or NaN) leaves the point where it is.
  """
  relative = position - center
  r = jnp.linalg.norm(relative, axis=-1)
  bounded = jnp.isfinite(radius)
  a = jnp.where(bounded, radius, 1.0)
  folded = a - jnp.abs(jnp.mod(r, 2 * a) - a)
  outside = bounded & (r > a)
  scale = jnp.where(outside, folded / jnp.where(outside, r, 1.0), 1.0)
  return jnp.where(outside[..., None], center + relative * scale[..., None], position)


def _reflected_walk(start, increments, qd: QDMotion):
  """Positions after each of ``increments`` [n, P, 3], each taken from the previous
  (reflected) position and reflected: [n, P, 3]."""

  def step(position, increment):
    position = reflect(position + increment, qd.center_um, qd.radius_um)
    return position, position

  return jax.lax.scan(step, start, increments)[1]


def _bridge(key, total, variance, pieces: int):
  """``pieces`` increments of a Brownian path that add up to ``total`` [P, 3], each with
  the per-axis ``variance`` [P] before conditioning on the sum: [pieces, P, 3]."""
  noise = jax.random.normal(key, (pieces,) + total.shape) * jnp.sqrt(variance)[:, None]
  return noise - noise.mean(axis=0) + total / pieces


def confine(key, positions, qd: QDMotion, frame):
  """A frame's free paths made reflected ones for the confined QDs, sample by sample.

  Each increment between samples is taken from the previous reflected position and
  reflected. The step from one line's last sample to the next line's first spans the
  retrace, far longer than a dwell; it is split into ``RETRACE_SUBSTEPS`` pieces of the
  Brownian bridge between its ends, each reflected, so that steps stay small against the
  radius.

  Args:
    key: PRNG key for the bridges.
    positions: [P, h, w, K, 3] um free paths; the first sample is inside the sphere.
    qd: the QDs' motion.
    frame: the frame's ``simulate.Params``.

  Returns:
    [P, h, w, K, 3]: unchanged for unconfined QDs, reflected for confined ones.
  """
  shape = positions.shape
  p, h = shape[0], shape[1]
  lines = jnp.moveaxis(positions.reshape(p, h, -1, 3), 0, 2)  # [h, L, P, 3]
  within = jnp.diff(lines, axis=1)  # [h, L-1, P, 3]
  first = jnp.concatenate([lines[0, :1], _reflected_walk(lines[0, 0], within[0], qd)])
  if h == 1:
    reflected = first[None]
  else:
    retrace = lines[1:, 0] - lines[:-1, -1]  # [h-1, P, 3]
    retrace_s = frame.retrace_s + frame.dwell_s / frame.substeps
    variance = 2.0 * qd.diffusion_um2_s * retrace_s / RETRACE_SUBSTEPS

    def one_line(position, inputs):
      steps, bridge_key, line_start = inputs
      pieces = _bridge(bridge_key, line_start, variance, RETRACE_SUBSTEPS)
      position = _reflected_walk(position, pieces, qd)[-1]
      rest = _reflected_walk(position, steps, qd)
      line = jnp.concatenate([position[None], rest])
      return line[-1], line

    inputs = (within[1:], jax.random.split(key, h - 1), retrace)
    _, later = jax.lax.scan(one_line, first[-1], inputs)
    reflected = jnp.concatenate([first[None], later])
  reflected = jnp.moveaxis(reflected, 2, 0).reshape(shape)
  confined = jnp.isfinite(qd.radius_um).reshape((p,) + (1,) * (len(shape) - 1))
  return jnp.where(confined, reflected, positions)


def frame_paths(key, frame, qd: QDMotion, kinds: tuple[str, ...], start):
  """One frame's paths of every QD.

  Args:
    key: PRNG key (the same draws as ``simulate.brownian_paths``).
    frame: the frame's ``simulate.Params``.
    qd: the QDs' motion.
    kinds: the static kinds of the movie's populations.
    start: [P, 3] um, the position at the frame's first sample.

  Returns:
    positions: [P, height, width, substeps, 3] um.
  """
  from qdjax.sim import scan, simulate

  positions = simulate.brownian_paths(key, frame, qd.diffusion_um2_s, start)
  if "directed" in kinds:
    times = scan.sample_times(
      frame.height, frame.width, frame.substeps, frame.dwell_s, frame.retrace_s
    )
    elapsed = times - times[0, 0, 0]
    positions = positions + _velocity3(qd)[:, None, None, None, :] * elapsed[None, ..., None]
  if "confined" in kinds:
    positions = confine(jax.random.fold_in(key, 1), positions, qd, frame)
  return positions


def gap_displacement(key, qd: QDMotion, kinds: tuple[str, ...], end, gap):
  """How far each QD moves in an unrecorded gap of ``gap`` seconds that starts at ``end``.

  Free QDs take one Gaussian step (drawn exactly as before populations existed); confined
  ones ``GAP_SUBSTEPS`` steps, each reflected, or, after a gap long enough to forget where
  they were (``FORGOTTEN_D_T``), a uniform point of their sphere; directed ones add
  ``v gap``.

  Args:
    key: PRNG key.
    qd: the QDs' motion.
    kinds: the static kinds of the movie's populations.
    end: [P, 3] um.
    gap: [] seconds.

  Returns:
    [P, 3] um, to add to ``end``.
  """
  diffusion = qd.diffusion_um2_s[:, None]
  step = jax.random.normal(key, end.shape) * jnp.sqrt(2.0 * diffusion * gap)
  if "directed" in kinds:
    step = step + _velocity3(qd) * gap
  if "confined" in kinds:
    keys = jax.random.split(jax.random.fold_in(key, 1), GAP_SUBSTEPS)
    steps = jax.vmap(lambda k: jax.random.normal(k, end.shape))(keys)
    steps = steps * jnp.sqrt(2.0 * diffusion * gap / GAP_SUBSTEPS)
    if "directed" in kinds:
      steps = steps + _velocity3(qd) * (gap / GAP_SUBSTEPS)
    reflected = _reflected_walk(end, steps, qd)[-1]
    forgotten = qd.diffusion_um2_s * gap > FORGOTTEN_D_T * qd.radius_um**2
    anew = qd.center_um + _uniform_in_ball(jax.random.fold_in(key, 2), qd.radius_um)
    reflected = jnp.where(forgotten[:, None], anew, reflected)
    step = jnp.where(jnp.isfinite(qd.radius_um)[:, None], reflected - end, step)
  return step


def truth_arrays(qd: QDMotion, active) -> dict:
  """Each QD's motion as the NumPy arrays a movie file holds (one QD, no batch axis).

  Returns:
    dict of [P] arrays ``qd_active`` (bool), ``qd_motion`` (kind names),
    ``qd_population`` (int), ``qd_diffusion_um2_s``, ``qd_radius_um`` (NaN where not
    confined), ``qd_speed_um_s``, and ``qd_velocity_um_s`` [P, 2] (vx, vy),
    ``qd_center_um`` [P, 3] (the sphere's centre; NaN where not confined).
  """
  qd = jax.device_get(qd)
  velocity = np.asarray(qd.velocity_um_s, np.float32) + np.float32(0)  # no -0 in files
  return {
    "qd_active": np.asarray(active, bool),
    "qd_motion": np.asarray(KINDS)[np.asarray(qd.kind)],
    "qd_population": np.asarray(qd.population, np.int32),
    "qd_diffusion_um2_s": np.asarray(qd.diffusion_um2_s, np.float32),
    "qd_radius_um": np.asarray(qd.radius_um, np.float32),
    "qd_speed_um_s": np.hypot(velocity[:, 0], velocity[:, 1]),
    "qd_velocity_um_s": velocity,
    "qd_center_um": np.asarray(qd.center_um, np.float32),
  }


# The per-QD columns of a .tif movie's <stem>_truth.csv, from the ``qd_*`` arrays.
TRUTH_COLUMNS = {
  "motion": "qd_motion",
  "population": "qd_population",
  "D_um2_s": "qd_diffusion_um2_s",
  "radius_um": "qd_radius_um",
  "speed_um_s": "qd_speed_um_s",
}


def truth_table(source):
  """Each QD's true motion, one row per QD: what a benchmark compares estimates with.

  Args:
    source: the arrays of a movie (``movie.generate``, or ``np.load`` of its .npz), or a
      path: a movie's .npz, or its .tif (whose ``<stem>_truth.csv`` is read).

  Returns:
    a pandas DataFrame indexed by ``particle`` (the QD's column in the ground truth, and
    its identity) with columns ``active`` (the QD exists), ``motion`` (a ``KINDS`` name),
    ``population`` (index of its population), ``D_um2_s``, ``radius_um`` (NaN where not
    confined), ``speed_um_s``, ``vx_um_s``, ``vy_um_s``.

  Raises:
    ValueError: the source holds no per-QD motion (a movie written before it existed).
  """
  import pandas as pd

  if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
    path = str(source)
    if path.endswith((".tif", ".tiff")):
      csv = path.rsplit(".", 1)[0] + "_truth.csv"
      rows = pd.read_csv(csv)
      missing = [c for c in ("motion", "vx_um_s") if c not in rows]
      if missing:
        raise ValueError(f"{csv} has no per-QD motion columns ({', '.join(missing)})")
      rows["active"] = rows["active"].astype(bool)
      columns = ["active", *TRUTH_COLUMNS, "vx_um_s", "vy_um_s"]
      return rows.groupby("particle")[columns].first()
    with np.load(path) as saved:
      source = {k: saved[k] for k in saved.files if k.startswith("qd_")}
  if "qd_motion" not in source:
    raise ValueError("these movie arrays hold no per-QD motion (qd_* arrays)")
  table = pd.DataFrame({"active": np.asarray(source["qd_active"], bool)})
  for column, key in TRUTH_COLUMNS.items():
    value = np.asarray(source[key])
    table[column] = value if column == "motion" else value.astype(np.float64)
  table["population"] = table["population"].astype(np.int64)
  velocity = np.asarray(source["qd_velocity_um_s"], np.float64)
  table["vx_um_s"], table["vy_um_s"] = velocity[:, 0], velocity[:, 1]
  table.index.name = "particle"
  return table
