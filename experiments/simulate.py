r"""Simulate two-photon raster-scan frames of diffusing QDs and save them as .npz.

  python experiments/simulate.py --preset=paper --regime=1 --num_images=100 \
      --seed=0 --output=frames.npz --plot

Writes an uncompressed .npz: ``images`` (n, h, w) float32, photon counts (or PMT output
with ``--config.overrides.detector=pmt``; ``--integer_counts`` stores photon counts as the
smallest unsigned integer type that holds them, uint8 unless a count exceeds 255);
``keypoints`` (n, P, 2) float32 trajectory centroids in px (trackpy convention, NaN where
absent), ``present`` (n, P), ``diffusion`` (n,), ``z``, ``expected`` (float32) and
``params`` (JSON, with ``images_dtype`` and ``images_unit``).
``--plot`` also writes <output>.png, a contact sheet of the first frames with the ground
truth marked.

Movies (``--num_frames=T``): one movie of T frames recorded back to back, every QD on one
continuous 3D path (QDs enter and leave the field and drift out of focus; optional
blinking), e.g.

  python experiments/simulate.py --preset=paper --diffusion=0.5 --num_frames=100 \
      --num_particles=1:5 --config.overrides.height=64 --config.overrides.width=64 \
      --output=movie.tif

``.npz`` holds ``images`` (T, h, w), per-frame ground truth ``keypoints`` (T, P, 2; the QD's
identity is its column P), ``present``, ``centroids``, ``z``, ``on_fraction``,
``diffusion``, ``frame_interval_s`` and ``params``; ``.tif`` holds the images, with
``<stem>_truth.csv`` and ``<stem>_params.json`` beside it.

Mixed motion (``--populations``): each QD of the movie belongs to one population, drawn
with the given fractions (they sum to 1). A population is ``kind:fraction`` followed by
``:name=value`` items, populations separated by commas:

  free:FRACTION[:D=um2/s][:sigma=S]        Brownian; D log-normal if sigma (sd of ln D) > 0
  confined:FRACTION:radius=um[:D=um2/s]    Brownian in a reflecting sphere of this radius
  immobile:FRACTION                        D = 0
  directed:FRACTION:speed=um/s[:D=um2/s]   drift in a random in-plane direction + Brownian

A population without ``D`` takes the movie's (``--diffusion``/``--regime``), e.g.

  python experiments/simulate.py --preset=paper --diffusion=0.5 --num_frames=200 \
      --num_particles=20 --config.overrides.height=64 --config.overrides.width=64 \
      --populations=free:0.5:D=0.05:sigma=0.5,free:0.2,confined:0.2:radius=0.2,immobile:0.1 \
      --output=mixed.tif

Each QD's truth is in the .npz as [P] arrays ``qd_active``, ``qd_motion`` (kind),
``qd_population``, ``qd_diffusion_um2_s``, ``qd_radius_um`` (NaN unless confined),
``qd_speed_um_s``, ``qd_velocity_um_s`` (P, 2) and ``qd_center_um`` (P, 3), and in the
truth CSV as the columns ``active,motion,population,D_um2_s,radius_um,speed_um_s,vx_um_s,
vy_um_s`` (``qdjax.sim.motion.truth_table`` reads either, one row per QD).

Tissue motion and structured background (docs/spec.md, section 1, "Tissue"): the whole
sample moves while each frame is recorded, so every line sees QDs and background where
the tissue was then (spots shear and jitter), and the background is autofluorescence
fixed in the tissue. ``--tissue`` takes the preset's values (``invivo`` has them, off by
default; ``paper`` has none); each of ``--breathing_um``, ``--breathing_hz``,
``--heartbeat_um``, ``--heartbeat_hz``, ``--drift_um_s``, ``--texture_cv``,
``--texture_um``, ``--vessel`` and ``--gradient_per_um`` sets one value (and switches
tissue on), e.g.

  python experiments/simulate.py --preset=invivo --diffusion=0.5 --num_frames=100 \
      --breathing_um=0,1,0.3 --breathing_hz=1.5 --heartbeat_um=0.2 --heartbeat_hz=8 \
      --texture_cv=0.5 --vessel=1:1.5:30 --output=moving.tif

A movie's ``.npz`` then holds ``tissue_um`` (T, h, 3), the tissue's displacement (um) at
the middle of each line, ``tissue_time_s`` (T, h) those times, ``tissue_phase`` and
``tissue_centroids`` (T, P, 2), the QDs' centroids in the tissue's frame (``centroids``
and ``keypoints`` are where they appeared); a ``.tif`` has ``<stem>_tissue.csv``
(``frame,line,time_s,dx_um,dy_um,dz_um``) beside it. Single frames (without
``--num_frames``) get the motion within the frame and the background too.
"""

from absl import flags

from qdjax import cli, io
from qdjax.sim import presets

_CONFIG = cli.define_config(
  __file__,
  "simulate",
  "Simulation config file (default: configs/simulate.py beside this script). Override the "
  f"preset's values with {presets.OVERRIDES_HELP}.",
)
_PRESET = flags.DEFINE_string(
  "preset", None, "Preset name or JSON preset file; overrides --config.preset."
)
_DIFFUSION = flags.DEFINE_string(
  "diffusion", None, "D in um^2/s, or lo:hi for log-uniform per frame."
)
_REGIME = flags.DEFINE_enum("regime", None, ["1", "2", "3"], "Use the preset's D1, D2 or D3.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 100, "Frames to simulate.", lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "Dataset seed; frame i uses fold_in(key(seed), i).")
_OUTPUT = flags.DEFINE_string(
  "output", None, "Output .npz path (a movie: .npz or .tif).", required=True
)
_NUM_FRAMES = flags.DEFINE_integer(
  "num_frames", None, "Simulate one movie of this many frames instead of --num_images frames."
)
_NUM_PARTICLES = flags.DEFINE_string("num_particles", None, "QDs per frame or movie: k or lo:hi.")
_FRAME_INTERVAL = flags.DEFINE_float(
  "frame_interval_s", None, "Movie: seconds between frame starts; default H * (W dwell + retrace)."
)
_OUTSIDE = flags.DEFINE_float(
  "outside_px", 0.0, "Movie: QDs start up to this far further out than the margin (enter later)."
)
_BLINK_ON = flags.DEFINE_float(
  "blink_on_s", None, "Movie: mean on time of a blinking QD, s; default: the preset's (1)."
)
_BLINK_OFF = flags.DEFINE_float(
  "blink_off_s", None, "Movie: mean off time, s; 0: no blinking; default: the preset's (0)."
)
_POPULATIONS = flags.DEFINE_string(
  "populations",
  None,
  "Movie: motion populations, comma-separated kind:fraction[:name=value...], kinds free, "
  "confined (radius=um), immobile, directed (speed=um/s); D=um2/s (default --diffusion's), "
  "sigma=sd of ln D. E.g. free:0.7:D=0.05:sigma=0.5,confined:0.2:radius=0.2,immobile:0.1. "
  "Default: all free at --diffusion's D.",
)
_INTEGER_COUNTS = flags.DEFINE_bool(
  "integer_counts",
  False,
  "Store photon counts as the smallest unsigned integer type that holds them (uint8 unless a "
  "count exceeds 255) instead of float32: a smaller file; cast to float before arithmetic "
  "(uint8 - 3 wraps around). PMT output stays float32.",
)
_PLOT = flags.DEFINE_bool("plot", False, "Also write a PNG contact sheet beside --output.")
_TISSUE = flags.DEFINE_bool(
  "tissue",
  None,
  "Tissue motion and structured background with the preset's values (invivo has them; "
  "default: the preset's choice, off for both named presets). The flags below set single "
  "values and switch tissue on.",
)
_BREATHING_UM = flags.DEFINE_string(
  "breathing_um", None, "Breathing amplitude (half peak-to-peak), um: A (all axes) or x,y,z."
)
_BREATHING_HZ = flags.DEFINE_float("breathing_hz", None, "Breathing frequency, Hz (default 1.5).")
_HEARTBEAT_UM = flags.DEFINE_string(
  "heartbeat_um", None, "Heartbeat amplitude (half peak-to-peak), um: A (all axes) or x,y,z."
)
_HEARTBEAT_HZ = flags.DEFINE_float("heartbeat_hz", None, "Heart rate, Hz (default 7).")
_DRIFT = flags.DEFINE_string("drift_um_s", None, "Tissue drift velocity, um/s: v or vx,vy,vz.")
_TEXTURE_CV = flags.DEFINE_float(
  "texture_cv", None, "Background texture's relative sd (log-normal; 0: flat background)."
)
_TEXTURE_UM = flags.DEFINE_float(
  "texture_um", None, "Background texture's correlation length, um (default 0.4)."
)
_VESSEL = flags.DEFINE_string(
  "vessel",
  None,
  "A vessel edge in the background: CONTRAST[:WIDTH_UM[:ANGLE_DEG[:OFFSET_UM]]], a band "
  "of relative brightness CONTRAST (>= -1), FWHM WIDTH_UM (default 1), at ANGLE_DEG from x "
  "(default 90), its centre OFFSET_UM from the frame's centre (default 0).",
)
_GRADIENT = flags.DEFINE_string(
  "gradient_per_um", None, "Background gradient: relative change per um, g or gx,gy."
)


def sim_params_from_config(config, preset, diffusion=None, regime=None):
  overrides = presets.config_overrides(config.overrides, preset)
  return preset.sim_params(diffusion=diffusion, regime=regime, **overrides)


def main(argv):
  cli.check_no_extra_args(argv)
  config = _CONFIG.value
  preset = presets.get(_PRESET.value or config.preset)
  if _DIFFUSION.value is not None and _REGIME.value is not None:
    raise ValueError("give --diffusion or --regime, not both")
  diffusion = None if _DIFFUSION.value is None else cli.parse_diffusion(_DIFFUSION.value)
  regime = None if _REGIME.value is None else int(_REGIME.value)
  populations = None
  if _POPULATIONS.value is not None:
    if _NUM_FRAMES.value is None:
      raise ValueError("--populations is for movies: give --num_frames too")
    populations = _parse_populations(_POPULATIONS.value)
  # Populations that all give their own D (or none, immobile) need no movie D.
  own_d = populations is not None and all(
    p.diffusion_um2_s is not None or p.kind == "immobile" for p in populations
  )
  if diffusion is None and regime is None and not own_d:
    raise ValueError("give --diffusion=D (or lo:hi) or --regime=1|2|3")
  params = sim_params_from_config(config, preset, diffusion, regime)
  if _NUM_PARTICLES.value is not None:
    params = params.replace(num_particles=_parse_particles(_NUM_PARTICLES.value))
  tissue = _tissue(preset)
  if tissue.moving or tissue.structured:
    params = params.replace(tissue=tissue)
  if _NUM_FRAMES.value is not None:
    return _write_movie(params, preset, populations)
  if not _OUTPUT.value.endswith(".npz"):
    raise ValueError(f"--output must end in .npz, got {_OUTPUT.value}")
  io.check_output_path(_OUTPUT.value)
  if _PLOT.value:
    io.check_output_path(_OUTPUT.value[:-4] + ".png", inputs=[_OUTPUT.value])
  from qdjax.sim import data  # here: --help and a bad flag exit without loading it

  arrays = data.write(
    _OUTPUT.value,
    params,
    _NUM_IMAGES.value,
    _SEED.value,
    preset=preset,
    integer_counts=_INTEGER_COUNTS.value,
    progress="simulate",
  )
  print(f"wrote {_NUM_IMAGES.value} frames to {_OUTPUT.value}")
  if _PLOT.value:
    from qdjax import plotting  # matplotlib: imported only when a plot is asked for

    png = _OUTPUT.value[:-4] + ".png"
    titles = [f"D={d:.3g}" for d in arrays["diffusion"][:32]]
    plotting.contact_sheet(arrays["images"], png, keypoints=arrays["keypoints"], titles=titles)
    print(f"wrote {png}")


def _parse_particles(text: str) -> tuple[int, int]:
  try:
    parts = [int(v) for v in text.split(":")]
  except ValueError:
    parts = []
  if len(parts) == 1:
    parts *= 2
  if len(parts) != 2 or parts[0] < 0 or parts[1] < parts[0]:
    raise ValueError(f"--num_particles must be k or lo:hi with 0 <= lo <= hi, got {text!r}")
  return tuple(parts)


def _numbers(flag: str, text: str) -> tuple[float, ...]:
  try:
    return tuple(float(v) for v in text.split(","))
  except ValueError:
    raise ValueError(
      f"--{flag} must be a number or comma-separated numbers, got {text!r}"
    ) from None


def _tissue(preset):
  """The tissue from --tissue and the single-value flags (each switches tissue on)."""
  values = {}
  for flag, holder in (
    ("breathing_um", _BREATHING_UM),
    ("heartbeat_um", _HEARTBEAT_UM),
    ("drift_um_s", _DRIFT),
    ("gradient_per_um", _GRADIENT),
  ):
    if holder.value is not None:
      numbers = _numbers(flag, holder.value)
      size = 2 if flag == "gradient_per_um" else 3
      if len(numbers) not in (1, size):
        raise ValueError(f"--{flag} must be one number or {size}, got {holder.value!r}")
      values[flag] = numbers[0] if len(numbers) == 1 else numbers
  for flag, holder in (
    ("breathing_hz", _BREATHING_HZ),
    ("heartbeat_hz", _HEARTBEAT_HZ),
    ("texture_cv", _TEXTURE_CV),
    ("texture_um", _TEXTURE_UM),
    ("vessel", _VESSEL),
  ):
    if holder.value is not None:
      values[flag] = holder.value
  on = _TISSUE.value
  if on is None:
    on = True if values else None
  try:
    return preset.tissue_params(on=on, **values)
  except ValueError as error:
    raise ValueError(f"--{_flag_of(str(error))}: {error}") from None


def _flag_of(message: str) -> str:
  """The flag a tissue error names (its first word: the value's name)."""
  name = message.split()[0]
  return "vessel" if name == "vessel" else name


def _parse_populations(text: str):
  from qdjax.sim import motion

  try:
    populations = motion.parse_populations(text)
    motion.make_motion(populations)  # the fractions' sum
  except ValueError as error:
    raise ValueError(f"--populations: {error}") from None
  return populations


def _write_movie(params, preset, populations=None):
  from qdjax.sim import movie

  movie_params = movie.make_params(
    params,
    _NUM_FRAMES.value,
    frame_interval_s=_FRAME_INTERVAL.value,
    outside_px=_OUTSIDE.value,
    blink_on_s=preset.blinking_s[0] if _BLINK_ON.value is None else _BLINK_ON.value,
    blink_off_s=preset.blinking_s[1] if _BLINK_OFF.value is None else _BLINK_OFF.value,
    motion=populations,
    tissue=params.tissue,
  )
  if not _OUTPUT.value.endswith((".npz", ".tif", ".tiff")):
    raise ValueError(f"--output must end in .npz or .tif for a movie, got {_OUTPUT.value}")
  movie.check_output_paths(_OUTPUT.value)
  record = movie.params_record(movie_params, preset)
  # In pieces of frames, each written as it comes: memory is bounded by a piece.
  written = movie.write(_OUTPUT.value, movie_params, _SEED.value, record, progress="simulate")
  print(f"wrote a movie of {_NUM_FRAMES.value} frames to {', '.join(written)}")


if __name__ == "__main__":
  cli.run(main)
