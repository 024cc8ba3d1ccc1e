import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The experiments' configs import as ``configs``, as they do when a script runs.
sys.path.insert(0, str(REPO / "experiments"))


def run_script(script: str, *args: str, env=None, timeout=600) -> subprocess.CompletedProcess:
  """Runs ``python experiments/<script> args`` from the repo root, capturing output."""
  full_env = {**os.environ, **(env or {})}
  # The scripts import qdjax from this checkout, whatever copy is installed.
  full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
  return subprocess.run(
    [sys.executable, str(REPO / "experiments" / script), *args],
    cwd=REPO,
    env=full_env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
  """A bad-input run: non-zero exit, no traceback, exactly one ``error:`` line naming the problem.

  Every needle must be in that one line (not merely somewhere in stderr).
  """
  output = result.stdout + result.stderr
  assert result.returncode != 0, output
  assert "Traceback" not in output, output
  error_lines = [ln for ln in result.stderr.splitlines() if ln.startswith(("error:", "FATAL"))]
  assert len(error_lines) == 1, result.stderr
  for needle in needles:
    assert needle in error_lines[0], (needle, error_lines[0])


def checkpoint_params(workdir) -> list:
  """The model parameters of a training workdir's latest checkpoint, as NumPy arrays, read
  with Orbax alone (as any user of the written checkpoint would)."""
  import jax
  import numpy as np
  import orbax.checkpoint as ocp

  manager = ocp.CheckpointManager((Path(workdir) / "checkpoints").absolute())
  restored = manager.restore(
    manager.latest_step(),
    args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
  )
  manager.close()
  return jax.tree.leaves(jax.tree.map(np.asarray, restored["state"]["model"]))


@pytest.fixture
def script():
  return run_script
