"""Movies: frames recorded back to back, each QD on one continuous 3D path.

Section 8 of docs/spec.md.

    params = movie.make_params(presets.get("paper").sim_params(diffusion=0.5), num_frames=50)
    movies = movie.simulate_movies(jax.random.key(0), params, 8)   # [8, 50, h, w] counts

Frame f starts at ``f * frame_interval_s``. The default interval is
``height * (width * dwell + retrace)``: the next frame's first line follows the last
line's retrace. A longer interval leaves an unrecorded gap that the paths still diffuse
through. Within a frame the paths, the expected image and the ground truth are exactly
those of a single frame (``qdjax.sim.simulate``); across frames the path carries on from where
it was.

QDs start uniformly over the field inset by ``margin_px`` (as in a single frame) and
widened by ``outside_px`` on every side, so with ``outside_px > margin_px`` some enter
later, and any may leave: in x and y across the field's edge, in z out of focus (their z
starts in ``[-z_range, z_range]`` and moves like x and y). How each QD moves is drawn
from ``params.motion``'s populations (``qdjax.sim.motion``: free with a D per QD, confined to
a reflecting sphere, immobile, or directed); by default every QD is free at the movie's D,
drawn once per movie from the frame's ``diffusion_um2_s``. Optional blinking is a
two-state (on/off) Markov process with exponential dwell times of means ``blink_on_s``
and ``blink_off_s``; ``blink_off_s = 0`` (the default) means never off. The state is drawn
once per line: a QD emits for a whole line or not at all.

Ground truth per frame and QD (the QD's identity is its index): the trajectory centroid of
the frame's recorded samples, its z centroid, the fraction of lines it was on, and
``present``: the QD exists, its centroid lies inside the frame (docs/spec.md, section 1) and it was
on for at least half of the frame's lines; per QD, its motion (``Movie.motion``).
Tissue motion and a structured background (``params.tissue``, ``qdjax.sim.tissue``;
none by default): the paths are drawn and carried in the tissue's frame, and every sample
sees them, and the background, displaced by d(t), t = f * frame_interval_s + the sample's
time in the frame. The centroids above are then where the QDs appeared; the truth adds the
tissue-frame centroids and d at the middle of each line (``tissue_um``, [T, h, 3]).
Everything is a pure function of the key, vmapped over movies; the same key gives the same
movie in any batch.
"""

from __future__ import annotations

import contextlib
import functools
import math
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from qdjax.sim import detector, scan, simulate
from qdjax.sim import motion as motion_lib
from qdjax.sim import tissue as tissue_lib


@struct.dataclass
class MovieParams:
  """A movie: the frame's Params plus timing across frames and blinking.

  Build with ``make_params``, which validates.
  """

  frame: simulate.Params
  frame_interval_s: Any  # frame start to next frame start, s
  outside_px: Any  # QDs start up to this far outside the field, px
  blink_on_s: Any  # mean on-dwell, s
  blink_off_s: Any  # mean off-dwell, s; 0: never off (no blinking)
  motion: motion_lib.Motion  # the QDs' motion populations (qdjax.sim.motion)
  tissue: tissue_lib.Tissue  # tissue motion and structured background (qdjax.sim.tissue)
  num_frames: int = struct.field(pytree_node=False, default=2)


def default_frame_interval(params: simulate.Params) -> float:
  """``height * (width * dwell + retrace)``: frames back to back, no extra flyback."""
  line = scan.line_period(params.width, float(params.dwell_s), float(params.retrace_s))
  return params.height * float(line)


def frame_span(params: simulate.Params):
  """Seconds from the start of a frame's first dwell to the end of its last one."""
  line = scan.line_period(params.width, params.dwell_s, params.retrace_s)
  return (params.height - 1) * line + params.width * params.dwell_s


def make_params(
  frame: simulate.Params,
  num_frames: int,
  *,
  frame_interval_s: float | None = None,
  outside_px: float = 0.0,
  blink_on_s: float = 1.0,
  blink_off_s: float = 0.0,
  motion: motion_lib.Motion | Sequence[motion_lib.Population] | None = None,
  tissue: tissue_lib.Tissue | None = None,
) -> MovieParams:
  """Validated MovieParams.

  Args:
    frame: the frame's simulation Params (size, optics, photons, D, QD count).
    num_frames: T >= 1 frames.
    frame_interval_s: seconds between frame starts (default ``default_frame_interval``);
      at least the time a frame takes to record.
    outside_px: start positions extend this much further out than ``margin_px`` allows
      (>= 0); beyond the edge when larger than the margin.
    blink_on_s, blink_off_s: mean on and off dwell times (s); ``blink_off_s = 0`` turns
      blinking off.
    motion: how the QDs move: a ``motion.Motion``, or populations
      (``motion.Population``) whose fractions sum to 1. Default: every QD free at the
      movie's D (drawn from the frame's ``diffusion_um2_s``).
    tissue: tissue motion and structured background (``tissue.make_params``). Default:
      the frame's ``tissue``, or none (no motion, the flat background).

  Raises:
    ValueError: naming the first bad value.
  """
  if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
    raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
  if frame_interval_s is None:
    frame_interval_s = default_frame_interval(frame)
  for name, value in (
    ("frame_interval_s", frame_interval_s),
    ("outside_px", outside_px),
    ("blink_on_s", blink_on_s),
    ("blink_off_s", blink_off_s),
  ):
    if not math.isfinite(float(value)) or float(value) < 0:
      raise ValueError(f"{name} must be finite and >= 0, got {value}")
  if float(blink_off_s) > 0 and float(blink_on_s) <= 0:
    raise ValueError(f"blink_on_s must be > 0 when blinking, got {blink_on_s}")
  span = float(frame_span(frame))
  if float(frame_interval_s) < span * (1 - 1e-6):
    raise ValueError(
      f"frame_interval_s={frame_interval_s} is shorter than the {span:.6g} s a "
      f"{frame.height}x{frame.width} frame takes to record"
    )
  if motion is None:
    motion = motion_lib.make_motion()
  elif not isinstance(motion, motion_lib.Motion):
    motion = motion_lib.make_motion(motion)
  if tissue is None:
    tissue = frame.tissue if frame.tissue is not None else tissue_lib.make_params()
  elif not isinstance(tissue, tissue_lib.Tissue):
    raise ValueError(f"tissue must be a qdjax.sim.tissue.Tissue, got {tissue!r}")
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  return MovieParams(
    frame=frame.replace(tissue=None),  # the movie's tissue runs through the whole movie
    tissue=tissue,
    frame_interval_s=f32(frame_interval_s),
    outside_px=f32(outside_px),
    blink_on_s=f32(blink_on_s),
    blink_off_s=f32(blink_off_s),
    motion=motion,
    num_frames=num_frames,
  )


@struct.dataclass
class Movie:
  """One simulated movie (a leading batch axis is added by ``simulate_movies``).

  Attributes:
    counts: [T, h, w] recorded values (photons, or detector output).
    expected: [T, h, w] noise-free expected photons.
    keypoints: [T, P, 2] trajectory centroid (x, y) px of where the QD appeared (with the
      tissue's displacement); NaN where not present.
    centroids: [T, P, 2] the same for every QD, present or not.
    tissue_centroids: [T, P, 2] the trajectory centroid in the tissue's frame (without
      the displacement), px; equal to ``centroids`` without tissue motion.
    present: [T, P] bool (see the module docstring).
    z: [T, P] z centroid (with the displacement), um.
    on_fraction: [T, P] fraction of the frame's lines the QD was on (0 for absent QDs).
    start_um: [T, P, 3] position at each frame's first sample in the tissue's frame, um.
    tissue_um: [T, h, 3] the tissue's displacement d at the middle of each line, um.
    tissue_phase: [2] the breathing and heartbeat phases, radians.
    active: [P] bool, which QDs exist.
    diffusion: [] the movie's D, um^2/s (drawn from the frame's ``diffusion_um2_s``): every
      QD's D under the default motion.
    motion: each QD's population, kind, D, sphere and drift (``motion.QDMotion``, [P, ...]).
  """

  counts: jax.Array
  expected: jax.Array
  keypoints: jax.Array
  centroids: jax.Array
  tissue_centroids: jax.Array
  present: jax.Array
  z: jax.Array
  on_fraction: jax.Array
  start_um: jax.Array
  tissue_um: jax.Array
  active: jax.Array
  diffusion: jax.Array
  motion: motion_lib.QDMotion
  tissue_phase: jax.Array


def _start_positions(key, params: MovieParams):
  frame = params.frame
  p = frame.max_particles
  kx, ky, kz = jax.random.split(key, 3)
  a, lo = frame.pixel_size_um, frame.margin_px - params.outside_px
  x = jax.random.uniform(kx, (p,), minval=lo, maxval=frame.width - 1 - lo) * a
  y = jax.random.uniform(ky, (p,), minval=lo, maxval=frame.height - 1 - lo) * a
  z = jax.random.uniform(kz, (p,), minval=-1.0, maxval=1.0) * frame.z_range_um
  return jnp.stack([x, y, z], axis=-1)


def _stay_on(params: MovieParams, on, dt):
  """P(on after dt | state now) of the two-state chain, elementwise."""
  rate_off = 1.0 / jnp.maximum(params.blink_on_s, 1e-30)
  rate_on = 1.0 / jnp.maximum(params.blink_off_s, 1e-30)
  p_on = rate_on / (rate_on + rate_off)
  decay = jnp.exp(-(rate_on + rate_off) * dt)
  prob = jnp.where(on, p_on + (1 - p_on) * decay, p_on * (1 - decay))
  return jnp.where(params.blink_off_s > 0, prob, 1.0)


# fold_in data of the motion draws: a stream of their own, so the others (and the default
# movie) stay as they were before motion populations.
_MOTION_STREAM = 0x6D6F74


def _start(key, params: MovieParams):
  """What a movie draws once: which QDs exist, the movie's D, each QD's motion, the
  tissue's phases and texture, the per-frame key, the first state."""
  frame = params.frame
  k_count, k_d, k_start, k_blink0, k_frames = jax.random.split(key, 5)
  lo, hi = frame.num_particles
  active = jnp.arange(frame.max_particles) < jax.random.randint(k_count, (), lo, hi + 1)
  diffusion = simulate.sample_diffusion(k_d, frame)
  # The stationary probability of being on.
  total = jnp.maximum(params.blink_on_s + params.blink_off_s, 1e-30)
  p_on = 1.0 - params.blink_off_s / total
  on0 = jax.random.uniform(k_blink0, active.shape) < p_on
  start = _start_positions(k_start, params)
  k_motion = jax.random.fold_in(key, _MOTION_STREAM)
  qd = motion_lib.sample(k_motion, params.motion, diffusion, start)
  modes = tissue_lib.draw(jax.random.fold_in(key, tissue_lib.STREAM), params.tissue)
  return active, diffusion, (qd, modes), k_frames, (start, on0)


def _scan_frames(params: MovieParams, active, drawn, k_frames, carry, indices):
  """Frames ``indices`` (consecutive) from ``carry``, the state at the end of the frame
  before the first: (new carry, per-frame arrays). Each frame draws its random numbers
  from ``fold_in(k_frames, index)``, so a movie is the same in one scan or in pieces.

  The paths are carried in the tissue's frame; each frame shows them, and the background,
  where the tissue's displacement carries them at each sample's time."""
  qd, modes = drawn
  frame = params.frame
  h = frame.height
  line = scan.line_period(frame.width, frame.dwell_s, frame.retrace_s)
  # From the last sample of one frame to the first of the next, and from the last line's
  # start to the next frame's first line.
  gap = params.frame_interval_s - frame_span(frame) + frame.dwell_s / frame.substeps
  line_gap = params.frame_interval_s - (h - 1) * line
  kinds = params.motion.kinds

  def one_frame(carry, index):
    end, on = carry
    k_gap, k_path, k_blink, k_noise = jax.random.split(jax.random.fold_in(k_frames, index), 4)
    first = index == 0
    step = motion_lib.gap_displacement(k_gap, qd, kinds, end, gap)
    start = end + jnp.where(first, 0.0, step)
    positions = motion_lib.frame_paths(k_path, frame, qd, kinds, start)
    u = jax.random.uniform(k_blink, (h,) + on.shape)
    dts = jnp.full((h,), line).at[0].set(jnp.where(first, 0.0, line_gap))

    def one_line(state, inputs):
      u_line, dt = inputs
      state = u_line < _stay_on(params, state, dt)
      return state, state

    on_last, on_lines = jax.lax.scan(one_line, on, (u, dts))
    emitting = active[:, None] & on_lines.T  # [P, h]
    start_s = index * params.frame_interval_s
    seen, background, tissue_um = tissue_lib.observe(
      params.tissue, modes, frame, positions, start_s
    )
    expected = simulate.expected_image(seen, emitting, frame, background)
    centroid, z = simulate.trajectory_centroid(seen, frame)
    tissue_centroid = centroid
    if params.tissue.moving:
      tissue_centroid = simulate.trajectory_centroid(positions, frame)[0]
    on_fraction = jnp.where(active, on_lines.mean(axis=0), 0.0)
    present = active & simulate.inside_frame(centroid, frame) & (on_fraction >= 0.5)
    out = dict(
      expected=expected,
      keypoints=jnp.where(present[:, None], centroid, jnp.nan),
      centroids=centroid,
      tissue_centroids=tissue_centroid,
      present=present,
      z=z,
      on_fraction=on_fraction,
      start_um=start,
      tissue_um=tissue_um,
      noise_key=k_noise,
    )
    return (positions[:, -1, -1, -1], on_last), out

  return jax.lax.scan(one_frame, carry, indices)


def _render_noise_free(key, params: MovieParams):
  active, diffusion, drawn, k_frames, init = _start(key, params)
  indices = jnp.arange(params.num_frames)
  _, frames = _scan_frames(params, active, drawn, k_frames, init, indices)
  noise_keys = frames.pop("noise_key")
  qd, modes = drawn
  movie = Movie(
    counts=None,
    active=active,
    diffusion=diffusion,
    motion=qd,
    tissue_phase=modes.phases,
    **frames,
  )
  return movie, noise_keys


@jax.jit
def _render_piece(params: MovieParams, active, drawn, k_frames, carry, indices):
  carry, frames = _scan_frames(params, active, drawn, k_frames, carry, indices)
  noise_keys = frames.pop("noise_key")
  frames["counts"] = detector.record_batch(noise_keys, frames["expected"], params.frame)
  return carry, frames


# Frames per piece of ``iter_frames``: about 4 M pixels (64 frames of 256 x 256), so memory
# is bounded by the piece, not the movie (a whole 2000-frame 256 x 256 movie in one scan
# took over 15 GB).
PIECE_PIXELS = 1 << 22


def piece_frames(params: MovieParams) -> int:
  """Frames per piece of ``iter_frames`` for this frame size."""
  return max(1, min(params.num_frames, PIECE_PIXELS // (params.frame.height * params.frame.width)))


def iter_frames(params: MovieParams, seed: int, chunk: int | None = None) -> Iterator[dict]:
  """The movie ``generate(params, seed)`` gives, in pieces of ``chunk`` frames (default
  ``piece_frames``): memory is bounded by one piece, whatever the movie's length.

  Yields:
    dicts with ``generate``'s per-frame arrays for the next frames (images, expected,
    keypoints, centroids, tissue_centroids, present, z, on_fraction, tissue_um,
    tissue_time_s), in order, the movie's diffusion and tissue_phase and the per-QD
    ``qd_*`` arrays (``motion.truth_arrays``).
  """
  chunk = piece_frames(params) if chunk is None else chunk
  if chunk < 1:
    raise ValueError(f"chunk must be >= 1, got {chunk}")
  active, diffusion, drawn, k_frames, carry = jax.jit(_start)(jax.random.key(seed), params)
  movie_diffusion = np.float32(jax.device_get(diffusion))
  per_qd = motion_lib.truth_arrays(drawn[0], active)
  phases = np.asarray(jax.device_get(drawn[1].phases), np.float32)
  chunk = min(chunk, params.num_frames)
  for first in range(0, params.num_frames, chunk):
    last = min(first + chunk, params.num_frames)
    # Every piece renders ``chunk`` frames, the last one past the movie's end and cut: one
    # compiled program serves every piece. A frame draws from its own key and the frames
    # before it, so the frames past the end change none of the movie's.
    indices = jnp.arange(first, first + chunk)
    carry, frames = _render_piece(params, active, drawn, k_frames, carry, indices)
    frames = jax.device_get(frames)
    keep = last - first
    yield {
      "images": np.asarray(frames["counts"][:keep], np.float32),
      **{k: np.asarray(frames[k][:keep], _PER_FRAME[k]) for k in _PER_FRAME},
      "tissue_time_s": tissue_times(params, first, last),
      "diffusion": movie_diffusion,
      "tissue_phase": phases,
      **per_qd,
    }


def tissue_times(params: MovieParams, first: int = 0, last: int | None = None) -> np.ndarray:
  """When ``tissue_um`` holds the tissue's displacement: the middle of each line's
  recording (the mean of its sample times), s from the movie's start.

  Returns:
    [last - first, h] float64 seconds, frames ``first`` .. ``last - 1`` (default all).
  """
  last = params.num_frames if last is None else last
  frame = params.frame
  line = float(frame.retrace_s) + frame.width * float(frame.dwell_s)
  within = np.arange(frame.height) * line + frame.width * float(frame.dwell_s) / 2
  return np.arange(first, last)[:, None] * float(params.frame_interval_s) + within


_PER_FRAME = {  # generate's per-frame arrays beside the images, and their dtypes
  "expected": np.float32,
  "keypoints": np.float32,
  "centroids": np.float32,
  "tissue_centroids": np.float32,
  "present": bool,
  "z": np.float32,
  "on_fraction": np.float32,
  "tissue_um": np.float32,
}


def render_batch(keys, params: MovieParams) -> Movie:
  """One movie per key: a Movie whose arrays lead with [len(keys)].

  The detector sees all frames of all movies as one batch (``detector.record_batch``).
  """
  movies, noise_keys = jax.vmap(_render_noise_free, (0, None))(keys, params)
  n, t = noise_keys.shape[:2]
  h, w = params.frame.height, params.frame.width
  counts = detector.record_batch(
    noise_keys.reshape(n * t), movies.expected.reshape(n * t, h, w), params.frame
  )
  return movies.replace(counts=counts.reshape(n, t, h, w))


@functools.partial(jax.jit, static_argnums=2)
def simulate_movies(key, params: MovieParams, num_movies: int) -> Movie:
  """``num_movies`` independent movies; movie i is ``render(split(key, num_movies)[i])``."""
  return render_batch(jax.random.split(key, num_movies), params)


@jax.jit
def render(key, params: MovieParams) -> Movie:
  """One movie."""
  return jax.tree.map(lambda x: x[0], render_batch(key[None], params))


def generate(params: MovieParams, seed: int) -> dict:
  """One movie of the given seed as NumPy arrays (key: ``jax.random.key(seed)``).

  Returns:
    dict with images [T, h, w] f32, expected [T, h, w], keypoints [T, P, 2] (NaN where not
    present), centroids [T, P, 2], tissue_centroids [T, P, 2] (in the tissue's frame),
    present [T, P], z [T, P], on_fraction [T, P], tissue_um [T, h, 3] (the tissue's
    displacement d, um, at tissue_time_s [T, h], the middle of each line, s),
    tissue_phase [2], diffusion [], frame_interval_s [] and each QD's motion, [P, ...]
    arrays named ``qd_*`` (``motion.truth_arrays``).
  """
  return as_arrays(render(jax.random.key(seed), params), params)


def as_arrays(one: Movie, params: MovieParams) -> dict:
  """One Movie (no batch axis) as the NumPy arrays of ``generate``."""
  out = jax.device_get(one)
  return {
    "images": np.asarray(out.counts, np.float32),
    "expected": np.asarray(out.expected, np.float32),
    "keypoints": np.asarray(out.keypoints, np.float32),
    "centroids": np.asarray(out.centroids, np.float32),
    "tissue_centroids": np.asarray(out.tissue_centroids, np.float32),
    "present": np.asarray(out.present, bool),
    "z": np.asarray(out.z, np.float32),
    "on_fraction": np.asarray(out.on_fraction, np.float32),
    "tissue_um": np.asarray(out.tissue_um, np.float32),
    "tissue_time_s": tissue_times(params),
    "tissue_phase": np.asarray(out.tissue_phase, np.float32),
    "diffusion": np.float32(out.diffusion),
    "frame_interval_s": np.float32(params.frame_interval_s),
    **motion_lib.truth_arrays(out.motion, out.active),
  }


def params_record(params: MovieParams, preset=None) -> dict:
  """The frame's ``params`` record (docs/spec.md, section 6), the movie's timing, blinking,
  motion populations and tissue."""
  from qdjax.sim import data

  record = data.params_record(params.frame, preset)
  record.update(
    num_frames=params.num_frames,
    frame_interval_s=float(params.frame_interval_s),
    outside_px=float(params.outside_px),
    blink_on_s=float(params.blink_on_s),
    blink_off_s=float(params.blink_off_s),
    populations=[p.to_dict() for p in params.motion.populations()],
    tissue=params.tissue.to_dict(),
  )
  return record


def output_paths(path: str) -> list[str]:
  """The files ``save`` writes for ``path``: itself, and beside a .tif its truth, params and
  tissue displacement (``<stem>_truth.csv``, ``<stem>_params.json``, ``<stem>_tissue.csv``).

  Raises:
    ValueError: ``path`` ends in neither .npz nor .tif/.tiff.
  """
  if path.endswith(".npz"):
    return [path]
  if not path.endswith((".tif", ".tiff")):
    raise ValueError(f"movie output must end in .npz or .tif, got {path}")
  stem = path.rsplit(".", 1)[0]
  return [path, stem + "_truth.csv", stem + "_params.json", stem + "_tissue.csv"]


def check_output_paths(path: str, inputs=()) -> list[str]:
  """Every file ``save`` would write, checked before the work (``io.check_output_path``)."""
  from qdjax import io

  paths = output_paths(path)
  for i, one in enumerate(paths):
    io.check_output_path(one, inputs=[*inputs, *paths[:i]])
  return paths


def write(
  path: str,
  params: MovieParams,
  seed: int,
  record: dict,
  *,
  chunk: int | None = None,
  progress: bool | str = False,
) -> list[str]:
  """Simulates the movie ``generate(params, seed)`` in pieces (``iter_frames``) and writes
  it as ``save`` does, each piece as it comes: memory is bounded by a piece, not the movie.

  The .npz is uncompressed (as ``data.write``'s: simulated counts barely compress). All
  files go to temporary names and are renamed together when complete.

  Args:
    path: .npz, or .tif/.tiff (with the files of ``output_paths`` beside it).
    params, seed: the movie.
    record: the ``params`` record (``params_record``).
    chunk: frames per piece (default ``piece_frames``).
    progress: a tqdm bar over frames (a string: its label).

  Returns:
    the paths written.
  """
  import json

  from tqdm.auto import tqdm

  from qdjax import io

  paths = output_paths(path)
  t = params.num_frames
  h, w = params.frame.height, params.frame.width
  small = {k: [] for k in _PER_FRAME if k != "expected"}
  small["tissue_time_s"] = []
  diffusion = {}
  desc = progress if isinstance(progress, str) else "simulate"

  def images(bar, spill=None):
    """The movie's frames, piece by piece; keeps the small arrays, spills the expected."""
    for piece in iter_frames(params, seed, chunk):
      for k, parts in small.items():
        parts.append(piece[k])
      # The movie's D and each QD's motion (qd_*), the same in every piece.
      diffusion.update(
        {k: v for k, v in piece.items() if k in ("diffusion", "tissue_phase") or k[:3] == "qd_"}
      )
      if spill is not None:
        spill.write(np.ascontiguousarray(piece["expected"]).data)
      bar.update(len(piece["images"]))
      yield piece["images"]

  def small_arrays() -> dict:
    return {
      **{k: np.concatenate(v) for k, v in small.items()},
      **diffusion,
      "frame_interval_s": np.float32(params.frame_interval_s),
    }

  text = json.dumps(record, sort_keys=True)
  with tqdm(total=t, unit="frame", disable=not progress, desc=desc) as bar:
    if path.endswith(".npz"):
      # A zip archive takes one member at a time: the images stream in while the expected
      # images wait in an unnamed temporary file beside the output (gone on any exit).
      with io.npz_writer(path) as archive, tempfile.TemporaryFile(dir=_folder(path)) as spill:
        with archive.stream("images", (t, h, w), np.float32) as write:
          for piece in images(bar, spill):
            write(piece)
        spill.seek(0)
        rows = max(1, piece_frames(params))
        with archive.stream("expected", (t, h, w), np.float32) as write:
          for first in range(0, t, rows):
            count = min(rows, t - first)
            write(np.frombuffer(spill.read(count * h * w * 4), np.float32).reshape(count, h, w))
        for k, v in small_arrays().items():
          archive.add(k, v)
        archive.add("params", np.asarray(text))
      return paths
    import tifffile

    with contextlib.ExitStack() as stack:
      tmps = [stack.enter_context(io.atomic_path(f)) for f in paths]
      pages = (page for piece in images(bar) for page in piece)
      tifffile.imwrite(
        tmps[0], data=pages, shape=(t, h, w), dtype=np.float32, photometric="minisblack"
      )
      _write_beside(tmps, small_arrays(), record)
  return paths


def _folder(path: str) -> str:
  import os

  return os.path.dirname(path) or "."


def _truth_table(arrays: dict):
  """The .tif movie's ``<stem>_truth.csv``: one row per frame and QD."""
  import pandas as pd

  t, p = arrays["present"].shape
  truth = pd.DataFrame(
    {
      "frame": np.repeat(np.arange(t), p),
      "particle": np.tile(np.arange(p), t),
      "x": arrays["centroids"][..., 0].reshape(-1),
      "y": arrays["centroids"][..., 1].reshape(-1),
      "z_um": arrays["z"].reshape(-1),
      "present": arrays["present"].reshape(-1).astype(int),
      "on_fraction": arrays["on_fraction"].reshape(-1),
    }
  )
  for column in ("x", "y", "z_um"):
    truth[column] = truth[column].map(lambda v: f"{v:.4f}")
  if "qd_motion" in arrays:  # each QD's motion, repeated on its every row
    per_qd = motion_lib.truth_table(arrays)
    per_qd["active"] = per_qd["active"].astype(int)
    for column in per_qd.columns:
      truth[column] = np.tile(per_qd[column].to_numpy(), t)
  return truth


def save(path: str, arrays: dict, record: dict) -> list[str]:
  """Writes a movie: .npz (arrays + ``params`` JSON), or .tif (the images) with
  ``<stem>_truth.csv`` (frame, particle, x, y, z_um, present, on_fraction and, per QD,
  active, motion, population, D_um2_s, radius_um, speed_um_s, vx_um_s, vy_um_s),
  ``<stem>_params.json`` and ``<stem>_tissue.csv`` (frame, line, time_s, dx_um, dy_um,
  dz_um: the tissue's displacement at the middle of each line) beside it. Every file is
  written atomically.

  Returns:
    the paths written.
  """
  import json

  from qdjax import io

  text = json.dumps(record, sort_keys=True)
  if path.endswith(".npz"):
    io.save_npz(path, params=text, **arrays)
    return [path]
  paths = output_paths(path)
  import tifffile

  # All are written under temporary names first and renamed only when all are complete,
  # so a failure on the last leaves none of them.
  with contextlib.ExitStack() as stack:
    tmps = [stack.enter_context(io.atomic_path(f)) for f in paths]
    tifffile.imwrite(tmps[0], arrays["images"], photometric="minisblack")
    _write_beside(tmps, arrays, record)
  return paths


def _write_beside(tmps, arrays: dict, record: dict) -> None:
  """The files beside a .tif movie (``output_paths``' others) at their temporary paths."""
  import json

  _, truth_tmp, params_tmp, tissue_tmp = tmps
  _truth_table(arrays).to_csv(truth_tmp, index=False)
  params_tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
  _tissue_table(arrays).to_csv(tissue_tmp, index=False)


def _tissue_table(arrays: dict):
  """The .tif movie's ``<stem>_tissue.csv``: the tissue's displacement, one row per frame
  and line (frame, line, time_s, dx_um, dy_um, dz_um)."""
  import pandas as pd

  shift = np.asarray(arrays["tissue_um"])
  t, h = shift.shape[:2]
  table = pd.DataFrame(
    {
      "frame": np.repeat(np.arange(t), h),
      "line": np.tile(np.arange(h), t),
      "time_s": np.asarray(arrays["tissue_time_s"]).reshape(-1),
      "dx_um": shift[..., 0].reshape(-1),
      "dy_um": shift[..., 1].reshape(-1),
      "dz_um": shift[..., 2].reshape(-1),
    }
  )
  table["time_s"] = table["time_s"].map(lambda v: f"{v:.9g}")
  for column in ("dx_um", "dy_um", "dz_um"):
    table[column] = table[column].map(lambda v: f"{v:.5g}")
  return table
