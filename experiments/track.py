r"""Track quantum dots through a movie and estimate each track's diffusion coefficient.

  python experiments/track.py --input=movie.tif --preset=invivo \
      --output=tracks.csv --diffusion_output=diffusion.csv --plot

--input: a movie (T, H, W), T >= 2, as .npy, .npz (array ``images``) or .tif, any frame
size. The defaults need no knowledge of the answer: the detections are thresholded where
the movie's scores split into noise and QDs, the link range comes from the step size
fitted to the detections of consecutive frames, tracks shorter than --min_frames
detections are dropped, motion common to all tracks is subtracted where it is
significant, and each track's D comes from the covariance-based estimator (Vestergaard et
al. 2014) per axis, with the raster scan's blur and the localisation error corrected and
missed frames allowed, or from the maximum-likelihood estimator where the localisation
error dominates (docs/diffusion.md). Every choice can be set instead (--min_score,
--max_diffusion, --drift, --estimator).

Writes --output (frame,x,y,score,particle; px, the centre of pixel (0, 0) is (0, 0)) and
--diffusion_output (particle, n_detections, n_frames_spanned, D_um2_s, D_se_um2_s,
estimator, D_x_um2_s, D_y_um2_s, sigma_x_um, sigma_y_um, D_msd_um2_s; D may be negative on
a noisy track, since the estimator is unbiased, and sigma 0 means the estimated sigma^2
came out <= 0). --plot also writes <output>.png, a quality report (score histogram and
threshold, detections per frame, track lengths, tracks and MSD curves labelled by
particle, common motion), and <output>_drift.csv. It prints the ensemble D over tracks
(weighted by displacements) and an edge-corrected D over --window-frame windows
(docs/diffusion.md, section 5).
"""

from absl import flags

from qdjax import cli, inference, io, locator, presets
from qdjax import track as track_lib

_INPUT = flags.DEFINE_string("input", None, "Movie: .npy, .npz or .tif, (T, H, W).", required=True)
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
_MODEL = flags.DEFINE_enum("model", None, list(inference.MODELS), locator.MODEL_HELP)
_OUTPUT = flags.DEFINE_string("output", None, "Tracks CSV to write.", required=True)
_DIFFUSION_OUTPUT = flags.DEFINE_string(
  "diffusion_output", None, "Per-track diffusion CSV to write.", required=True
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
  "plot", False, "Also write a quality report <output>.png and the motion <output>_drift.csv."
)


def main(argv):
  cli.check_no_extra_args(argv)
  preset = presets.get(_PRESET.value)
  stem = _OUTPUT.value.rsplit(".", 1)[0]
  plot = stem + ".png" if _PLOT.value else None
  drift_csv = stem + "_drift.csv" if _PLOT.value else None
  # Every output is checked before any work: none may be a directory, the input or another.
  written = [_INPUT.value]
  for path in (_OUTPUT.value, _DIFFUSION_OUTPUT.value, plot, drift_csv):
    if path is not None:
      io.check_output_path(path, inputs=written)
      written.append(path)
  locate = locator.make(_METHOD.value, workdir=_WORKDIR.value, model=_MODEL.value, preset=preset)
  summary = track_lib.track_file(
    _INPUT.value,
    _OUTPUT.value,
    _DIFFUSION_OUTPUT.value,
    locate,
    preset,
    frame_interval_s=_FRAME_INTERVAL.value,
    max_diffusion=_MAX_DIFFUSION.value,
    memory=_MEMORY.value,
    min_detections=_MIN_FRAMES.value,
    chunk=_CHUNK.value,
    min_score=_MIN_SCORE.value,
    window=_WINDOW.value,
    drift={"auto": None, "on": True, "off": False}[_DRIFT.value],
    estimator=_ESTIMATOR.value,
    plot_path=plot,
    drift_path=drift_csv,
  )
  print(track_lib.describe(summary))
  written = [_OUTPUT.value, _DIFFUSION_OUTPUT.value] + ([plot, drift_csv] if plot else [])
  print("-> " + ", ".join(written))


if __name__ == "__main__":
  cli.run(main)
