r"""Track quantum dots through movies and estimate each track's diffusion coefficient.

  python experiments/track.py --input=movie.tif --preset=invivo \
      --output=tracks.csv --diffusion_output=diffusion.csv --plot
  python experiments/track.py --input=movies/ --output_dir=out --workers=4
  python experiments/track.py --input='day*/*.tif' --output_dir=out --trackmate --napari

--input: a movie (T, H, W), T >= 2, as .npy, .npz (array ``images``) or .tif, any frame
size; or several: a folder (its .npy, .npz, .tif and .tiff files), a glob (quote it; **
recurses) or a list file (any other file: one movie, folder or glob a line, relative to
the list file; # comments). The defaults need no knowledge of the answer: the detections
are thresholded where the movie's scores split into noise and QDs, the link range comes
from the step size fitted to the detections of consecutive frames, tracks shorter than
--min_frames detections are dropped, motion common to all tracks is subtracted where it
is significant, and each track's D comes from the covariance-based estimator (Vestergaard
et al. 2014) per axis, with the raster scan's blur and the localisation error corrected
and missed frames allowed, or from the maximum-likelihood estimator where the
localisation error dominates (docs/diffusion.md). Every choice can be set instead
(--min_score, --max_diffusion, --drift, --tissue, --background, --estimator). Before
linking, the tissue's own motion (breathing, heartbeat) is read from the background, line by
line, and taken out of the detections where it is significant (--tissue), and where the
background has structure (textured tissue) the movie is localised again less its static
background, read from the movie with the QDs left out (--background; docs/diffusion.md).

One movie: writes --output (frame,x,y,score,particle; px, the centre of pixel (0, 0) is
(0, 0)) and --diffusion_output (particle, n_detections, n_frames_spanned, D_um2_s,
D_se_um2_s, estimator, D_x_um2_s, D_y_um2_s, sigma_x_um, sigma_y_um, D_msd_um2_s, and the
motion columns; D may be negative on a noisy track, since the estimator is unbiased, and
sigma 0 means the estimated sigma^2 came out <= 0). --plot also writes <output>.png, a
quality report (score histogram and threshold, detections per frame, track lengths,
tracks and MSD curves labelled by particle, common motion), <output>_drift.csv, and the
tissue's motion per strip of lines, <output>_tissue.csv and <output>_tissue.png.
--napari writes <output>_napari.csv (track_id,t,y,x: napari's Tracks layer) and
--trackmate <output>_trackmate.xml (opens in Fiji: Plugins > Tracking > Load a TrackMate
file). It prints the ensemble D over tracks (weighted by displacements) and an
edge-corrected D over --window-frame windows (docs/diffusion.md, section 5). Exit status
as every script's (qdjax/cli.py): 0, or 2 for a bad input or a movie with no track.

Several movies, or --output_dir: each movie <stem> gives <stem>_tracks.csv,
<stem>_diffusion.csv and <stem>_settings.json (the settings, the input's size and time,
its summary) in --output_dir (and <stem>_tracks.png, <stem>_drift.csv, <stem>_tissue.csv,
<stem>_tissue.png, <stem>_napari.csv, <stem>_trackmate.xml as asked), and summary.csv one
row per movie (name, path, status done|skipped|failed, error, frames, tracks, D_um2_s,
D_se_um2_s, D_edge_um2_s, D_edge_se_um2_s, drift_subtracted, drift_x_px, drift_y_px,
tissue_corrected, tissue_rms_px, background_flattened, seconds), rewritten as each movie
finishes. A rerun skips
movies whose outputs exist with the same settings (--overwrite tracks them again). A movie
that fails (unreadable, wrong shape, no track) gets its error in its row and the others go
on. --workers=N runs N worker processes (a
local Dask cluster, each loading the model once), --scheduler=ADDRESS a running Dask
cluster's workers. It prints the summary table; the exit status is 0 when no movie
failed, 2 when those that failed had bad input, 1 when any failed otherwise (a full
disk, a worker that died).
"""

from pathlib import Path

from absl import app, flags

from qdjax import cli, io
from qdjax.detect import shipped
from qdjax.localize import locator
from qdjax.sim import presets
from qdjax.tracks import batch
from qdjax.tracks import files as track_files
from qdjax.tracks import tracking as track_lib

_INPUT = flags.DEFINE_string(
  "input",
  None,
  "Movie(s): a .npy, .npz or .tif (T, H, W) file, a folder, a glob or a list file.",
  required=True,
)
_PRESET = flags.DEFINE_string(
  "preset", "paper", "Microscope preset: pixel size, dwell, retrace, PSF and its D range."
)
_FRAME_INTERVAL = flags.DEFINE_float(
  "frame_interval_s", None, "Seconds between frame starts; default H * (W * dwell + retrace)."
)
_METHOD = flags.DEFINE_enum("method", "model", list(locator.METHODS), "Localisation method.")
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Training workdir of a model; default: a model shipped with qdjax (--model)."
)
_MODEL = flags.DEFINE_enum("model", None, list(shipped.MODELS), locator.MODEL_HELP)
_OUTPUT = flags.DEFINE_string("output", None, "Tracks CSV to write (one movie).")
_DIFFUSION_OUTPUT = flags.DEFINE_string(
  "diffusion_output", None, "Per-track diffusion CSV to write (one movie)."
)
_OUTPUT_DIR = flags.DEFINE_string(
  "output_dir", None, "Several movies: write each one's outputs and summary.csv here."
)
_WORKERS = flags.DEFINE_integer(
  "workers", None, "--output_dir: worker processes (a local Dask cluster).", lower_bound=1
)
_SCHEDULER = flags.DEFINE_string(
  "scheduler", None, "--output_dir: the address of a running Dask scheduler to use."
)
_OVERWRITE = flags.DEFINE_bool(
  "overwrite", False, "--output_dir: track again movies whose outputs exist with these settings."
)
_NAPARI = flags.DEFINE_bool(
  "napari", False, "Also write <stem>_napari.csv (track_id,t,y,x) for napari's Tracks layer."
)
_TRACKMATE = flags.DEFINE_bool(
  "trackmate", False, "Also write <stem>_trackmate.xml, a TrackMate file for Fiji."
)
_MAX_DIFFUSION = flags.DEFINE_float(
  "max_diffusion", None, "Link for steps up to this D (um^2/s); default: fitted to the movie."
)
_MEMORY = flags.DEFINE_integer("memory", 3, "Frames a track may skip (blinks).", lower_bound=0)
_MIN_FRAMES = flags.DEFINE_integer(
  "min_frames",
  track_lib.MIN_DETECTIONS,
  "Shortest track kept and given a D (detections).",
  lower_bound=3,
)
_MIN_SCORE = flags.DEFINE_float(
  "min_score",
  None,
  "Drop detections scoring below this (trackpy: mass); default: where the scores split.",
)
_DRIFT = flags.DEFINE_enum(
  "drift",
  "auto",
  ["auto", "on", "off"],
  "Subtract motion common to all tracks: where significant (auto), always, never.",
)
_TISSUE = flags.DEFINE_enum(
  "tissue",
  "auto",
  ["auto", "on", "off"],
  "Correct for the tissue's motion read from the background: where significant (auto), "
  "always, never (not even estimated).",
)
_BACKGROUND = flags.DEFINE_enum(
  "background",
  "auto",
  ["auto", "on", "off"],
  "Localise the movie less its static background read from the movie (textured tissue is "
  "not taken for QDs): where the background has structure (auto), always, never.",
)
_ESTIMATOR = flags.DEFINE_enum(
  "estimator",
  "auto",
  ["auto", "cve", "mle"],
  "Per-track D: CVE, MLE, or the MLE where the localisation error dominates (auto).",
)
_WINDOW = flags.DEFINE_integer(
  "window",
  20,
  "Frames per window of the edge-corrected ensemble D (tracks cut at frames 0, W, 2W, ...; "
  "windows weighted by how likely their path fits in the field).",
  lower_bound=3,
)
_CHUNK = flags.DEFINE_integer("chunk", 256, "Frames per chunk (bounds memory).", lower_bound=1)
_PLOT = flags.DEFINE_bool(
  "plot",
  False,
  "Also write a quality report <output>.png, the common motion <output>_drift.csv and the "
  "tissue's motion <output>_tissue.csv and <output>_tissue.png.",
)


def _track_options() -> dict:
  return {
    "frame_interval_s": _FRAME_INTERVAL.value,
    "max_diffusion": _MAX_DIFFUSION.value,
    "memory": _MEMORY.value,
    "min_detections": _MIN_FRAMES.value,
    "chunk": _CHUNK.value,
    "min_score": _MIN_SCORE.value,
    "window": _WINDOW.value,
    "drift": {"auto": None, "on": True, "off": False}[_DRIFT.value],
    "tissue": {"auto": None, "on": True, "off": False}[_TISSUE.value],
    "background": {"auto": None, "on": True, "off": False}[_BACKGROUND.value],
    "estimator": _ESTIMATOR.value,
  }


def _one_movie(input_path: str) -> None:
  """One movie to --output and --diffusion_output."""
  preset = presets.get(_PRESET.value)
  stem = _OUTPUT.value.rsplit(".", 1)[0]
  plot = stem + ".png" if _PLOT.value else None
  drift_csv = stem + "_drift.csv" if _PLOT.value else None
  tissue_csv = stem + "_tissue.csv" if _PLOT.value else None
  tissue_png = stem + "_tissue.png" if _PLOT.value else None
  napari_csv = stem + "_napari.csv" if _NAPARI.value else None
  trackmate_xml = stem + "_trackmate.xml" if _TRACKMATE.value else None
  extras = [plot, drift_csv, tissue_csv, tissue_png, napari_csv, trackmate_xml]
  extras = [p for p in extras if p is not None]
  # Every output is checked before any work: none may be a directory, the input or another.
  written = [input_path]
  for path in (_OUTPUT.value, _DIFFUSION_OUTPUT.value, *extras):
    io.check_output_path(path, inputs=written)
    written.append(path)
  locate = locator.make(_METHOD.value, workdir=_WORKDIR.value, model=_MODEL.value, preset=preset)
  summary = track_files.track_file(
    input_path,
    _OUTPUT.value,
    _DIFFUSION_OUTPUT.value,
    locate,
    preset,
    plot_path=plot,
    drift_path=drift_csv,
    tissue_path=tissue_csv,
    tissue_plot_path=tissue_png,
    **_track_options(),
  )
  if napari_csv or trackmate_xml:
    import pandas as pd

    from qdjax.tracks import interop

    tracks = pd.read_csv(_OUTPUT.value)
    if napari_csv:
      interop.write_napari_csv(tracks, napari_csv)
    if trackmate_xml:
      interop.write_trackmate_xml(
        tracks,
        trackmate_xml,
        pixel_size_um=float(preset.values["pixel_size_um"]),
        frame_interval_s=float(summary["frame_interval_s"]),
        image_path=input_path,
        image_shape=io.open_frames(input_path, movie=True).shape,
      )
  print(track_lib.describe(summary))
  print("-> " + ", ".join([_OUTPUT.value, _DIFFUSION_OUTPUT.value, *extras]))


def _many_movies(inputs: list[Path]) -> int:
  """Every movie into --output_dir; returns the exit status (``batch.exit_code``)."""
  output_dir = cli.output_dir(_OUTPUT_DIR.value)
  summary = batch.track_many(
    inputs,
    output_dir,
    method=_METHOD.value,
    model=_MODEL.value,
    workdir=_WORKDIR.value,
    preset=_PRESET.value,
    workers=_WORKERS.value,
    scheduler=_SCHEDULER.value,
    overwrite=_OVERWRITE.value,
    plot=_PLOT.value,
    napari=_NAPARI.value,
    trackmate=_TRACKMATE.value,
    **_track_options(),
  )
  print(batch.describe(summary))
  print(f"-> {output_dir / batch.SUMMARY_FILE}")
  return batch.exit_code(summary)


def _is_one_movie_file(text: str) -> bool:
  """Whether --input names one movie file (or a missing file, reported as one)."""
  path = Path(text).expanduser()
  if path.is_dir():
    return False
  if path.is_file():
    return path.suffix.lower() in io.FRAME_SUFFIXES
  return not set("*?[") & set(text)


def main(argv):
  cli.check_no_extra_args(argv)
  one_file_outputs = _OUTPUT.value is not None or _DIFFUSION_OUTPUT.value is not None
  if _OUTPUT_DIR.value is not None:
    if one_file_outputs:
      raise app.UsageError("give --output_dir, or --output and --diffusion_output, not both")
    return _many_movies(batch.expand_inputs(_INPUT.value))
  if _is_one_movie_file(_INPUT.value):
    input_path = _INPUT.value  # as before: a missing file is reported by the tracking itself
  else:
    inputs = batch.expand_inputs(_INPUT.value)
    if len(inputs) > 1:
      raise app.UsageError(
        f"--input names {len(inputs)} movies: give --output_dir for their outputs"
      )
    input_path = str(inputs[0])
  if _WORKERS.value is not None or _SCHEDULER.value is not None or _OVERWRITE.value:
    raise app.UsageError("--workers, --scheduler and --overwrite are for runs with --output_dir")
  if _OUTPUT.value is None or _DIFFUSION_OUTPUT.value is None:
    raise app.UsageError("give --output and --diffusion_output (one movie), or --output_dir")
  _one_movie(input_path)
  return 0


if __name__ == "__main__":
  cli.run(main)
