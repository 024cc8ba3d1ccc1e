r"""Simulate two-photon raster-scan frames of diffusing QDs and save them as .npz.

  python experiments/simulate.py --preset=paper --regime=1 --num_images=100 \
      --seed=0 --output=frames.npz --plot

Writes ``images`` (n, h, w) counts, ``keypoints`` (n, P, 2) trajectory centroids in px
(trackpy convention, NaN where absent), ``present`` (n, P), ``diffusion`` (n,), ``z``,
``expected`` and ``params`` (JSON). ``--plot`` also writes <output>.png, a contact sheet
of the first frames with the ground truth marked.
"""

from absl import app, flags
from ml_collections import config_flags

from qdjax import cli, data, io, plotting, presets

_CONFIG = config_flags.DEFINE_config_file(
  "config", "experiments/configs/simulate.py", "Simulation config file.", lock_config=True
)
_PRESET = flags.DEFINE_string("preset", None, "Named parameter set; overrides --config.preset.")
_DIFFUSION = flags.DEFINE_string(
  "diffusion", None, "D in um^2/s, or lo:hi for log-uniform per frame."
)
_REGIME = flags.DEFINE_enum("regime", None, ["1", "2", "3"], "Use the preset's D1, D2 or D3.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 100, "Frames to simulate.", lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "Dataset seed; frame i uses fold_in(key(seed), i).")
_OUTPUT = flags.DEFINE_string("output", None, "Output .npz path.", required=True)
_PLOT = flags.DEFINE_bool("plot", False, "Also write a PNG contact sheet beside --output.")


def sim_params_from_config(config, preset, diffusion=None, regime=None):
  overrides = presets.config_overrides(config.overrides, preset)
  return preset.sim_params(diffusion=diffusion, regime=regime, **overrides)


@cli.one_line_errors
def main(argv):
  cli.check_no_extra_args(argv)
  config = _CONFIG.value
  preset = presets.get(_PRESET.value or config.preset)
  if _DIFFUSION.value is not None and _REGIME.value is not None:
    raise ValueError("give --diffusion or --regime, not both")
  diffusion = None if _DIFFUSION.value is None else cli.parse_diffusion(_DIFFUSION.value)
  regime = None if _REGIME.value is None else int(_REGIME.value)
  if diffusion is None and regime is None:
    raise ValueError("give --diffusion=D (or lo:hi) or --regime=1|2|3")
  params = sim_params_from_config(config, preset, diffusion, regime)
  if not _OUTPUT.value.endswith(".npz"):
    raise ValueError(f"--output must end in .npz, got {_OUTPUT.value}")
  io.check_output_path(_OUTPUT.value)
  arrays = data.generate(params, _NUM_IMAGES.value, _SEED.value, progress="simulate")
  io.save_npz(_OUTPUT.value, params=data.params_json(params, preset), **arrays)
  print(f"wrote {_NUM_IMAGES.value} frames to {_OUTPUT.value}")
  if _PLOT.value:
    png = _OUTPUT.value[:-4] + ".png"
    titles = [f"D={d:.3g}" for d in arrays["diffusion"][:32]]
    plotting.contact_sheet(arrays["images"], png, keypoints=arrays["keypoints"], titles=titles)
    print(f"wrote {png}")


if __name__ == "__main__":
  app.run(main)
