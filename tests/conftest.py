import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
  """A bad-input run: non-zero exit, no traceback, a short message naming the problem."""
  assert result.returncode != 0, result.stdout + result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  lines = [ln for ln in result.stderr.splitlines() if ln.strip() and "backend" not in ln]
  error_lines = [ln for ln in lines if ln.startswith(("error:", "FATAL"))]
  assert error_lines, result.stderr
  for needle in needles:
    assert needle in result.stderr, (needle, result.stderr)


@pytest.fixture
def script():
  return run_script
