"""The tests' script server (conftest.ScriptServer): a script run in a fork of it gives what
the same script gives as a fresh process."""

import subprocess
import sys

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


def test_a_served_script_ends_as_the_interpreter_ends_it(tmp_path):
  """The threads a script leaves running finish, its atexit handlers run, its unflushed
  output is written and its exit status is kept, as for a fresh process."""
  env = _script_env()
  if not SCRIPT_SERVER.serves(env):
    pytest.skip(f"the script server cannot serve: {SCRIPT_SERVER.broken}")
  ending = tmp_path / "ending.py"
  ending.write_text(
    "import atexit, sys, threading, time\n"
    "def late():\n"
    "  time.sleep(0.5)\n"
    "  open(sys.argv[1], 'w').write('thread')\n"
    "threading.Thread(target=late).start()\n"
    "atexit.register(lambda: print('atexit', file=sys.stderr))\n"
    # A buffered stdout whatever PYTHONUNBUFFERED says: only the exit flushes it.
    "sys.stdout = open(1, 'w', buffering=8192, closefd=False)\n"
    "sys.stdout.write('unflushed')\n"
    "sys.exit(int(sys.argv[2]))\n"
  )
  for status in (0, 3):
    results = []
    for name, fresh in (("served", False), ("fresh", True)):
      marker = tmp_path / f"{name}{status}.txt"
      if fresh:
        result = subprocess.run(
          [sys.executable, str(ending), str(marker), str(status)],
          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
      else:
        result = SCRIPT_SERVER.run([str(ending), str(marker), str(status)], env, tmp_path, 60)
      results.append((result.returncode, result.stdout, result.stderr, marker.read_text()))
    assert results[0] == results[1] == (status, "unflushed", "atexit\n", "thread")
