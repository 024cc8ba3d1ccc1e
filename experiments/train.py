r"""Train the keypoint detector on frames simulated on the device, then validate.

  python experiments/train.py --workdir=workdirs/train          # the preset's D range
  python experiments/train.py --diffusion=0.404 --workdir=workdirs/d1
  python experiments/train.py --config=experiments/configs/tiny.py --workdir=/tmp/qd_tiny \
      --config.num_steps=30

Re-running the same command resumes from the workdir's last checkpoint. Writes
metrics.jsonl, result.json (validation AUC at epsilon 1, 2, 3 px) and curves.png.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from qdjax import cli, train


def _one_line_exit(error: Exception):
  message = str(error).strip().strip("\"'").splitlines()[0]
  print(f"error: bad flag: no such config field {message!r}", file=sys.stderr)
  sys.exit(2)


try:
  # ml_collections reads the --config.* overrides from sys.argv right here, at definition,
  # so an unknown field fails now, before absl's own parsing.
  _CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/default.py", "Training config file.", lock_config=True
  )
except (AttributeError, KeyError, TypeError, ValueError) as e:
  _one_line_exit(e)
_DIFFUSION = flags.DEFINE_string(
  "diffusion", None, "D in um^2/s, or lo:hi (log-uniform); default: the preset's training range."
)
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/train", "Checkpoints, logs and results.")


@cli.one_line_errors
def main(argv):
  cli.check_no_extra_args(argv)
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  try:
    config = _CONFIG.value
    config.num_steps  # noqa: B018  (a config that failed to load raises on first access)
  except OSError as e:  # ml_collections defers a missing/broken config file to here
    raise FileNotFoundError(f"cannot load --config: {str(e).splitlines()[-1].strip()}") from None
  if _DIFFUSION.value is not None:
    cli.parse_diffusion(_DIFFUSION.value)  # fail on a bad value before any work
    with config.unlocked():
      config.diffusion = _DIFFUSION.value
  result = train.train_and_evaluate(config, _WORKDIR.value)
  for split, cells in result["auc_by_split"].items():
    print(f"{split}: " + "  ".join(f"AUC@{eps}px={auc:.3f}" for eps, auc in cells.items()))
  print(
    "validation AUC (best step "
    f"{result['best_step']}): "
    + "  ".join(f"eps={eps}px: {auc:.3f}" for eps, auc in result["auc"].items())
  )
  print(f"frames seen: {result['frames_seen']}; wrote {_WORKDIR.value}/result.json")


def parse_flags(argv):
  """absl's parsing, but an unknown ``--config.*`` field is one line, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    _one_line_exit(e)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
