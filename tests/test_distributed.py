"""Training under jax.distributed: two processes of one CPU device each train the same
parameters as one process of two devices."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import smoke_env

ROOT = Path(__file__).resolve().parents[1]
STEPS = 2
# The tiny config, shortened: validation runs once (at the last step) on one frame.
FLAGS = [
  "--config=experiments/configs/tiny.py",
  f"--config.num_steps={STEPS}",
  f"--config.log_every={STEPS}",
  f"--config.eval_every={STEPS}",
  f"--config.checkpoint_every={STEPS}",
  "--config.validation_size=1",
  "--config.validation_splits=val_d1",
]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir: Path, *extra: str, devices: int) -> subprocess.Popen:
  # No multi-process settings inherited: the reference runs as a single process.
  unset = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
  env = {k: v for k, v in os.environ.items() if k not in unset}
  env.update(
    PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    JAX_PLATFORMS="cpu",
  )
  env.update(smoke_env({"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}))
  return subprocess.Popen(
    [sys.executable, "experiments/train.py", *FLAGS, f"--workdir={workdir}", *extra],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _params(workdir: Path) -> list[np.ndarray]:
  """The model parameters of the last checkpoint, restored onto this process's one device
  (a checkpoint written on two devices does not restore here without a target)."""
  path = (workdir / "checkpoints" / str(STEPS) / "state").absolute()
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(path)
  metadata = getattr(metadata, "item_metadata", metadata)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
  return [np.asarray(a) for a in jax.tree.leaves(checkpointer.restore(path, target)["model"])]


@pytest.mark.slow
def test_two_processes_train_the_parameters_of_one_process_with_two_devices(tmp_path):
  port = _free_port()
  two = tmp_path / "two_processes"
  coordinator = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
  procs = [_start(two, *coordinator, f"--process_id={i}", devices=1) for i in range(2)] + [
    _start(tmp_path / "one_process", devices=2)
  ]
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=600))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
    assert proc.returncode == 0, stdout + stderr
  # Process 0 reports; process 1 prints nothing of the run.
  assert "validation AUC" in outputs[0][0] and "validation AUC" not in outputs[1][0]
  # One global mesh of the two processes' devices, not two meshes of one device each.
  run = json.loads((two / "run.json").read_text())
  assert (run["processes"], run["devices"]) == (2, 2)
  one_result = json.loads((tmp_path / "one_process" / "result.json").read_text())
  assert json.loads((two / "result.json").read_text())["auc"] == one_result["auc"]
  one, both = _params(tmp_path / "one_process"), _params(two)
  scale = max(float(np.abs(a).max()) for a in one)
  for a, b in zip(one, both, strict=True):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * max(scale, 1.0))
