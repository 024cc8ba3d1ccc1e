r"""The paper's table reproduced: trackpy, MLE and the model on the study-sized test sets.

  python experiments/evaluate.py
  python experiments/evaluate.py --methods=trackpy,mle --scale=0.05 --output_dir=/tmp/ev
  python experiments/evaluate.py --workdir=workdirs/run1
  python experiments/evaluate.py --config.preset=invivo --model=paper

Prints the section-3 table of docs/spec.md (the study's rows beside ours) and a localisation table
(RMSE, bias, Jaccard, RMSE over the Cramer-Rao bound), and writes table.md, table.json
and pr_curves.png into --output_dir.
"""

from absl import flags

from qdjax import cli
from qdjax.detect import shipped

_CONFIG = cli.define_config(
  __file__,
  "evaluate",
  "Evaluation config file (default: configs/evaluate.py beside this script); override its "
  "fields with --config.<field>=value, e.g. --config.trackpy_settings=tune.",
)
_METHODS = flags.DEFINE_string("methods", None, "Comma-separated methods; overrides config.")
_SCALE = flags.DEFINE_float("scale", None, "Test-set size factor; overrides config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Model training directory; overrides config.")
_MODEL = flags.DEFINE_enum(
  "model", None, list(shipped.MODELS), "Shipped model (without --workdir); overrides config."
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Output directory; overrides config.")
_SEED = flags.DEFINE_integer("seed", None, "User seed of the test splits; overrides config.")


def main(argv):
  config = cli.config_from_flags(
    argv, _CONFIG, _METHODS, _SCALE, _WORKDIR, _MODEL, _OUTPUT_DIR, _SEED
  )
  # Imported here, not at the top: --help and a bad flag exit without loading it.
  from qdjax.study import evaluate

  evaluate.parse_methods(config.methods)
  output_dir = cli.output_dir(config.output_dir)
  # Made before the work, so a bad path fails early; removed again if the run fails.
  with cli.removed_on_failure(output_dir):
    output_dir.mkdir(parents=True, exist_ok=True)
    result = evaluate.run(config)
    paths = evaluate.write_outputs(result, output_dir)
  print(result.markdown())
  for path in paths.values():
    print(f"wrote {path}")


if __name__ == "__main__":
  cli.run(main)
