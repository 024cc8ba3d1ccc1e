r"""The paper's table reproduced: trackpy, MLE and the model on the study-sized test sets.

  python experiments/evaluate.py
  python experiments/evaluate.py --methods=trackpy,mle --scale=0.05 --output_dir=/tmp/ev
  python experiments/evaluate.py --workdir=workdirs/run1
  python experiments/evaluate.py --config.preset=invivo --model=paper

Prints the section-3 table of docs/spec.md (the study's rows beside ours) and a localisation table
(RMSE, bias, Jaccard, RMSE over the Cramer-Rao bound), and writes table.md, table.json
and pr_curves.png into --output_dir.
"""

from pathlib import Path

from absl import flags

from qdjax import cli, evaluate, inference

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
  "model", None, list(inference.MODELS), "Shipped model (without --workdir); overrides config."
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Output directory; overrides config.")
_SEED = flags.DEFINE_integer("seed", None, "User seed of the test splits; overrides config.")


def main(argv):
  cli.check_no_extra_args(argv)
  config = _CONFIG.value
  with config.unlocked():
    for name, flag in (
      ("methods", _METHODS),
      ("scale", _SCALE),
      ("workdir", _WORKDIR),
      ("model", _MODEL),
      ("output_dir", _OUTPUT_DIR),
      ("seed", _SEED),
    ):
      if flag.value is not None:
        config[name] = flag.value
  evaluate.parse_methods(config.methods)
  output_dir = Path(config.output_dir)
  if output_dir.exists() and not output_dir.is_dir():
    raise NotADirectoryError(f"--output_dir is not a directory: {output_dir}")
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
