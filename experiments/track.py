r"""Track quantum dots through a movie and estimate each track's diffusion coefficient.

  python experiments/track.py --input=movie.tif --preset=paper --method=model \
      --output=tracks.csv --diffusion_output=diffusion.csv --plot

--input: a movie (T, H, W), T >= 2, as .npy, .npz (array ``images``) or .tif, any frame
size. Frames are localised in chunks of --chunk (memory bounded on long movies), linked
with trackpy.link (search range from the largest D and the frame interval, --memory
frames to bridge blinks), and each track's D is estimated by the covariance-based
estimator (Vestergaard et al. 2014), which corrects the raster scan's motion blur and the
localisation error; the naive MSD fit (trackpy.imsd, MSD = 4 D t) is the column
D_msd_um2_s. Writes --output (frame,x,y,score,particle; px, the centre of pixel (0, 0) is
(0, 0)) and --diffusion_output (particle,n_frames,D_um2_s,D_se_um2_s,sigma_um,D_msd_um2_s).
--plot also writes <output>.png: the tracks over the mean frame and their MSD curves.
It prints the ensemble D over tracks and, since fast QDs leave the field sooner, an
edge-corrected D over --window-frame windows of the tracks (docs/diffusion.md, section 5).
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
  "max_diffusion", None, "Largest D (um^2/s) to link for; default: top of the preset's range."
)
_MEMORY = flags.DEFINE_integer("memory", 3, "Frames a track may skip (blinks).", lower_bound=0)
_MIN_FRAMES = flags.DEFINE_integer("min_frames", 5, "Shortest track given a D.", lower_bound=3)
_MIN_SCORE = flags.DEFINE_float(
  "min_score", None, "Drop detections scoring below this (trackpy: mass) before linking."
)
_WINDOW = flags.DEFINE_integer(
  "window",
  20,
  "Frames per window of the edge-corrected ensemble D (tracks cut at frames 0, W, 2W, ...; "
  "windows weighted by how likely their path fits in the field).",
  lower_bound=3,
)
_CHUNK = flags.DEFINE_integer("chunk", 256, "Frames per chunk (bounds memory).", lower_bound=1)
_PLOT = flags.DEFINE_bool("plot", False, "Also draw tracks and MSD curves (<output>.png).")


def main(argv):
  cli.check_no_extra_args(argv)
  preset = presets.get(_PRESET.value)
  plot = (_OUTPUT.value.rsplit(".", 1)[0] + ".png") if _PLOT.value else None
  # Every output is checked before any work: none may be a directory, the input or another.
  written = [_INPUT.value]
  for path in (_OUTPUT.value, _DIFFUSION_OUTPUT.value, plot):
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
    min_frames=_MIN_FRAMES.value,
    chunk=_CHUNK.value,
    min_score=_MIN_SCORE.value,
    window=_WINDOW.value,
    plot_path=plot,
  )
  ens, field = summary["ensemble"], summary["field_ensemble"]
  print(
    f"{summary['frames']} frames, {summary['detections']} detections, {summary['tracks']} "
    f"tracks ({summary['tracks_with_D']} with D); ensemble D = {ens['D_um2_s']:.4g} +- "
    f"{ens['D_se_um2_s']:.2g} um^2/s; edge-corrected over {field['windows']} windows: "
    f"{field['D_um2_s']:.4g} +- {field['D_se_um2_s']:.2g} um^2/s -> {_OUTPUT.value}, "
    f"{_DIFFUSION_OUTPUT.value}" + (f" (+ {plot})" if plot else "")
  )


if __name__ == "__main__":
  cli.run(main)
