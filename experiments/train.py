r"""Train the keypoint detector on frames simulated on the device, then validate.

  python experiments/train.py --workdir=workdirs/train          # the preset's D range
  python experiments/train.py --diffusion=0.404 --workdir=workdirs/d1
  python experiments/train.py --config=experiments/configs/tiny.py --workdir=/tmp/qd_tiny \
      --config.num_steps=30

Re-running the same command resumes from the workdir's last checkpoint. Writes
metrics.jsonl, result.json (validation AUC at epsilon 1, 2, 3 px) and curves.png.

Several processes or hosts (``jax.distributed``): run the same command in each, with a
workdir they all see, and either ``--distributed`` inside a SLURM, Open MPI or TPU job, or
the coordinator, process count and process id (flags or $JAX_COORDINATOR_ADDRESS,
$JAX_NUM_PROCESSES, $JAX_PROCESS_ID):

  python experiments/train.py --coordinator_address=host0:1234 --num_processes=2 \
      --process_id=0 --workdir=/shared/qd_run        # on host0; --process_id=1 on host1
  srun python experiments/train.py --distributed --workdir=/shared/qd_run
"""

from pathlib import Path

import jax
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
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Run as one process of several (jax.distributed), detected from a SLURM, Open MPI or TPU "
  "job. Implied by any of the three flags below or their $JAX_ variables.",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  None,
  "host:port of process 0 in a multi-process run (default: $JAX_COORDINATOR_ADDRESS).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "Processes in a multi-process run (default: $JAX_NUM_PROCESSES)."
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "This process's index, 0 first (default: $JAX_PROCESS_ID)."
)


def _has_checkpoint(workdir: Path) -> bool:
  return any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*"))


def main(argv):
  cli.check_no_extra_args(argv)
  # Before anything else uses JAX; a no-op unless a multi-process run is asked for.
  train.initialize_distributed(
    _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_DISTRIBUTED.value
  )
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
  if jax.process_index() != 0:
    return  # process 0 reports
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
