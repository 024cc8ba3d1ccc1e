"""The functions a scientist calls from a notebook; each file command is a thin wrapper.

    import qdjax
    tracks, per_track = qdjax.track("movie.tif", preset="invivo")

Inputs are arrays or file paths, presets are names or preset files (``qdjax.sim.presets``),
and results are pandas DataFrames with trackpy's columns (x, y in px, the centre of pixel
(0, 0) at (0, 0); frame; particle).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd


def load_preset(preset):
  """A microscope preset: a name ('paper', 'invivo'), a preset file, or a ``Preset``."""
  from qdjax.sim import presets

  if isinstance(preset, presets.Preset):
    return preset
  return presets.get(str(preset))


def _frames(movie, *, movie_rank: bool):
  from qdjax import io

  if isinstance(movie, (str, os.PathLike)):
    return io.open_frames(movie, movie=movie_rank)
  frames = np.asarray(movie)
  if frames.ndim == 2 and not movie_rank:
    frames = frames[None]
  return frames


def track(
  movie,
  preset="invivo",
  *,
  method: str = "model",
  model: str | None = None,
  workdir=None,
  frame_interval_s: float | None = None,
  progress: bool = False,
  **options,
):
  """Tracks, per-track D and motion types of a movie, every default read from the movie.

  The same pipeline, with the same defaults, as ``experiments/track.py``
  (``qdjax.tracks.tracking.track_movie``; docs/diffusion.md, section 7).

  Args:
    movie: (T, H, W) array, or a .tif/.npy/.npz file.
    preset: the microscope (pixel size, scan timing, PSF): name, file or ``Preset``.
    method: 'model', 'trackpy' or 'mle'.
    model: a shipped model's name (default: the general one); workdir: a trained model.
    frame_interval_s: default ``H * (W * dwell + retrace)``.
    progress: a progress bar over frames.
    options: ``tracking.track_movie``'s settings (min_score, max_diffusion, memory,
      min_detections, window, drift, tissue, background, estimator, motion_types, chunk).

  Returns:
    ``tracking.Result``; it unpacks as ``tracks, per_track`` (DataFrames), and has
    ``.summary``, ``.populations``, ``.motion`` (common motion), ``.tissue`` (the
    tissue's motion read from the background), ``.background`` (the static background the
    movie was localised without, where it has structure) and ``.detections``.
  """
  from qdjax.localize import locator
  from qdjax.tracks import tracking as track_lib

  preset = load_preset(preset)
  locate = locator.make(method, workdir=workdir, model=model, preset=preset)
  frames = _frames(movie, movie_rank=True)
  return track_lib.track_movie(
    frames, locate, preset, frame_interval_s=frame_interval_s, progress=progress, **options
  )


def locate(
  images,
  *,
  method: str = "model",
  model: str | None = None,
  workdir=None,
  preset="paper",
  min_score: float | None = None,
  progress: bool = False,
) -> pd.DataFrame:
  """Detections in every frame: DataFrame ``frame, x, y, score`` (px).

  Args:
    images: (N, H, W) or (H, W) array, or a frame file.
    method: 'model', 'trackpy' or 'mle'.
    min_score: drop detections scoring below this (default: the method's default of
      ``experiments/locate.py``, ``qdjax.localize.files.DEFAULT_MIN_SCORE``).
  """
  from qdjax.localize import files as locate_lib
  from qdjax.localize import locator
  from qdjax.tracks import tracking as track_lib

  preset = load_preset(preset)
  locate_fn = locator.make(method, workdir=workdir, model=model, preset=preset)
  frames = _frames(images, movie_rank=False)
  detections, _ = track_lib.detect(frames, locate_fn, progress=progress)
  cut = locate_lib.DEFAULT_MIN_SCORE[method] if min_score is None else float(min_score)
  return detections[detections["score"] >= cut].reset_index(drop=True)


def simulate_movie(
  preset="invivo",
  *,
  num_frames: int = 50,
  seed: int = 0,
  frame_interval_s: float | None = None,
  outside_px: float = 0.0,
  populations=None,
  **overrides,
):
  """One simulated movie: (photon or PMT frames [T, H, W] float32, truth DataFrame).

  Args:
    preset: the microscope; ``overrides`` change its frame values (height, width,
      num_particles, diffusion_um2_s, peak_photons, ...).
    num_frames, seed, frame_interval_s: the movie (default interval: back to back).
    outside_px: QDs start up to this far beyond the field, so some enter later.
    populations: how the QDs move: ``motion.Population``s, or their text
      (``"free:0.3:D=0.05,confined:0.7:D=0.5:radius=0.3"``, as ``simulate.py
      --populations``); default: all free at the preset's D.

  Returns:
    (frames, truth): truth has frame, particle, x, y (the trajectory centroid, px), z,
    on_fraction, and the QD's motion and D, for every QD present in a frame.
  """
  import jax

  from qdjax.sim import motion as motion_lib
  from qdjax.sim import movie as movie_lib

  if isinstance(populations, str):
    populations = motion_lib.parse_populations(populations)
  frame = load_preset(preset).sim_params(**overrides)
  params = movie_lib.make_params(
    frame, num_frames, frame_interval_s=frame_interval_s, outside_px=outside_px,
    motion=populations,
  )  # fmt: skip
  out = jax.device_get(movie_lib.simulate_movies(jax.random.key(seed), params, 1))
  present = np.asarray(out.present[0])
  f, q = np.nonzero(present)
  centroids = np.asarray(out.centroids[0])
  truth = pd.DataFrame(
    {
      "frame": f,
      "particle": q,
      "x": centroids[f, q, 0],
      "y": centroids[f, q, 1],
      "z": np.asarray(out.z[0])[f, q],
      "on_fraction": np.asarray(out.on_fraction[0])[f, q],
    }
  )
  per_qd = motion_lib.truth_arrays(jax.tree.map(lambda a: a[0], out.motion), present.any(0))
  truth["motion"] = per_qd["qd_motion"][q]
  truth["D_um2_s"] = per_qd["qd_diffusion_um2_s"][q]
  return np.asarray(out.counts[0], np.float32), truth


def fit_microscope(frames, preset="paper", *, pmt=None, progress: bool = False, **options):
  """The simulator fitted to a stack of single-QD frames: the fitted preset's record
  (``qdjax.microscope.fit.fit_microscope_file``; ``presets.write_file`` saves it as a preset file).

  Args:
    frames: (N, H, W) array or file.
    preset: geometry, timing and start ranges of the microscope.
    pmt: a PMT calibration (``calibrate_pmt``'s file or values) when the frames are PMT
      output; None for frames in photons.
    options: ``fit.fit_microscope``'s settings (num_simulated, steps, seed, ...).

  Raises:
    ValueError: bad frames, or a fit that the data reject (no spot, several QDs, a J
      statistic beyond the 1% level).
  """
  from qdjax.microscope import fit, pmt_calibration

  if isinstance(pmt, (str, os.PathLike)):
    pmt = pmt_calibration.load_pmt(pmt)
  frames = np.asarray(_frames(frames, movie_rank=False), np.float32)
  return fit.fit_microscope_file(frames, load_preset(preset), pmt=pmt, progress=progress, **options)


def calibrate_pmt(frames, **options):
  """PMT gain, offset and dark noise from a stack of uniform frames
  (``qdjax.microscope.pmt_calibration.calibrate_pmt``)."""
  from qdjax.microscope import pmt_calibration

  return pmt_calibration.calibrate_pmt(_frames(frames, movie_rank=False), **options)


def classify_motion(tracks: pd.DataFrame, analysis, **options) -> pd.DataFrame:
  """Free, confined, directed or immobile per track (``qdjax.tracks.populations.classify``)."""
  from qdjax.tracks import populations

  return populations.classify(tracks, analysis, **options)


def fit_populations(per_track: pd.DataFrame, analysis, **options):
  """D populations over tracks (``qdjax.tracks.populations.fit_populations``)."""
  from qdjax.tracks import populations

  return populations.fit_populations(per_track, analysis, **options)


def track_many(inputs, output_dir, **options):
  """``track`` on many recordings into ``output_dir``, in-process or on a Dask cluster
  (``qdjax.tracks.batch.track_many``); returns the summary DataFrame, one row per recording."""
  from qdjax.tracks import batch

  return batch.track_many(inputs, output_dir, **options)
