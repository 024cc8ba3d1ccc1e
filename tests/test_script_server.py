"""The tests' script server (conftest.ScriptServer): a script run in a fork of it gives what
the same script gives as a fresh process."""

import subprocess

import numpy as np
import pytest
from conftest import SCRIPT_SERVER, _script_env, run_script


@pytest.mark.parametrize(
  "args",
  [
    ("simulate.py", "--help"),
    ("track.py", "--input=/nonexistent.tif", "--output_dir=/nonexistent"),
    ("simulate.py", "--regime=9", "--output=x.npz"),
  ],
)
def test_a_served_script_gives_what_a_fresh_one_gives(args):
  if not SCRIPT_SERVER.serves(_script_env()):
    # Every script then runs fresh: slower, not wrong.
    pytest.skip(f"the script server cannot serve: {SCRIPT_SERVER.broken}")
  served, fresh = run_script(*args), run_script(*args, fresh=True)
  assert (served.returncode, served.stdout, served.stderr) == (
    fresh.returncode,
    fresh.stdout,
    fresh.stderr,
  )


def test_a_served_simulation_writes_the_same_frames(tmp_path):
  """JAX's backend starts in the fork, and computes what a fresh process computes."""
  if not SCRIPT_SERVER.serves(_script_env()):
    pytest.skip(f"the script server cannot serve: {SCRIPT_SERVER.broken}")
  args = ("simulate.py", "--regime=1", "--num_images=3")
  served = run_script(*args, f"--output={tmp_path / 'served.npz'}")
  fresh = run_script(*args, f"--output={tmp_path / 'fresh.npz'}", fresh=True)
  assert served.returncode == fresh.returncode == 0, served.stderr + fresh.stderr
  with np.load(tmp_path / "served.npz") as a, np.load(tmp_path / "fresh.npz") as b:
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_an_uncaught_error_and_a_timeout(tmp_path):
  env = _script_env()
  if not SCRIPT_SERVER.serves(env):
    pytest.skip(f"the script server cannot serve: {SCRIPT_SERVER.broken}")
  failing = tmp_path / "failing.py"
  failing.write_text("import sys\nprint('out')\nraise SystemError('boom')\n")
  result = SCRIPT_SERVER.run([str(failing)], env, tmp_path, timeout=60)
  assert result.returncode == 1 and result.stdout == "out\n", result
  assert result.stderr.startswith("Traceback") and "SystemError: boom" in result.stderr
  sleeping = tmp_path / "sleeping.py"
  sleeping.write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
  with pytest.raises(subprocess.TimeoutExpired) as timeout:
    SCRIPT_SERVER.run([str(sleeping)], env, tmp_path, timeout=2)
  assert timeout.value.output == "started\n"
  # The server goes on serving.
  assert SCRIPT_SERVER.run([str(failing)], env, tmp_path, timeout=60).returncode == 1
