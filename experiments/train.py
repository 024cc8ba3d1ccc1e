r"""Train the keypoint detector on frames simulated on the device, then validate.

  python experiments/train.py --workdir=workdirs/train          # the preset's D range
  python experiments/train.py --diffusion=0.404 --workdir=workdirs/d1
  python experiments/train.py --config=experiments/configs/tiny.py --workdir=/tmp/qd_tiny \
      --config.num_steps=30

Re-running the same command resumes from the workdir's last checkpoint. Writes
metrics.jsonl, result.json (validation AUC at epsilon 1, 2, 3 px) and curves.png.
"""

from pathlib import Path

from absl import flags

from qdjax import cli, io
from qdjax.detect import train
from qdjax.sim import presets

_CONFIG = cli.define_config(
  __file__,
  "default",
  "Training config file (default: configs/default.py beside this script). Override any of "
  "its fields with --config.<field>=value, e.g. --config.num_steps=30; the simulation "
  f"values with {presets.OVERRIDES_HELP}.",
)
_DIFFUSION = flags.DEFINE_string(
  "diffusion", None, "D in um^2/s, or lo:hi (log-uniform); default: the preset's training range."
)
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/train", "Checkpoints, logs and results.")


def _has_checkpoint(workdir: Path) -> bool:
  return any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*"))


def main(argv):
  cli.check_no_extra_args(argv)
  io.check_output_dir(_WORKDIR.value)
  config = _CONFIG.value
  if _DIFFUSION.value is not None:
    cli.parse_diffusion(_DIFFUSION.value)  # fail on a bad value before any work
    with config.unlocked():
      config.diffusion = _DIFFUSION.value
  # A run that fails before its first checkpoint leaves no workdir behind; an interrupted
  # run keeps its last checkpoint, and the same command resumes from it.
  try:
    with cli.removed_on_failure(_WORKDIR.value, keep=_has_checkpoint):
      result = train.train_and_evaluate(config, _WORKDIR.value)
  except KeyboardInterrupt as e:
    if not _has_checkpoint(Path(_WORKDIR.value)):
      raise
    word, code = cli.interrupt_exit(e)
    cli.fail(f"{word}; {_WORKDIR.value} keeps its last checkpoint, the same command resumes", code)
  for split, cells in result["auc_by_split"].items():
    print(f"{split}: " + "  ".join(f"AUC@{eps}px={auc:.3f}" for eps, auc in cells.items()))
  print(
    "validation AUC (best step "
    f"{result['best_step']}): "
    + "  ".join(f"eps={eps}px: {auc:.3f}" for eps, auc in result["auc"].items())
  )
  print(f"frames seen: {result['frames_seen']}; wrote {_WORKDIR.value}/result.json")


if __name__ == "__main__":
  cli.run(main)
