r"""The reproduction map: trackpy, MLE, a model and the blur floor over (N, D).

  python experiments/reproduction.py --blur_floor_workdir=workdirs/blur_floor
  python experiments/reproduction.py --methods=model --workdir=workdirs/general
  python experiments/reproduction.py --methods=model --model=paper   # a shipped model
  python experiments/reproduction.py --methods=          # redraw from the saved results

Every cell uses the preset's geometry, timing and PSF (24 x 25 frames, one QD) at a photon
level N with background B = N/15 (the in vivo ratio), plus the preset's own (N, B), and a
diffusion coefficient D. Each method's AUCs are saved as <output_dir>/<method>.json;
methods not rerun are kept, so one method can be rerun alone. Then summary.md, auc.png and
reproduction.png are written from all saved methods of the same grid.
"""

from absl import flags

from qdjax import cli
from qdjax.localize import locator

_CONFIG = cli.define_config(
  __file__,
  "reproduction",
  "Map config file (default: configs/reproduction.py beside this script); override its "
  "fields with --config.<field>=value.",
)
_METHODS = flags.DEFINE_string(
  "methods",
  None,
  "Comma-separated methods to (re)measure: trackpy, mle, model, blur_floor; empty: only "
  "redraw from the saved results. Overrides config.",
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Training directory of the model column (default: the pretrained model)."
)
_MODEL = flags.DEFINE_string("model", None, locator.MODEL_HELP)
_BLUR_FLOOR_WORKDIR = flags.DEFINE_string(
  "blur_floor_workdir", None, "Training directory of the noise-free detector (blur_floor)."
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Output directory; overrides config.")


def main(argv):
  config = cli.config_from_flags(
    argv, _CONFIG, _METHODS, _WORKDIR, _MODEL, _BLUR_FLOOR_WORKDIR, _OUTPUT_DIR
  )
  # Imported here, not at the top: --help and a bad flag exit without loading it.
  from qdjax.study import reproduction, reproduction_report

  reproduction.parse_methods(config.methods)
  output_dir = cli.output_dir(config.output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  results = reproduction.run(config)
  print(reproduction_report.summary_markdown(results))
  for path in reproduction_report.write_report(results, output_dir).values():
    print(f"wrote {path}")


if __name__ == "__main__":
  cli.run(main)
