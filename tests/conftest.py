import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The experiments' configs import as ``configs``, as they do when a script runs.
sys.path.insert(0, str(REPO / "experiments"))


# Test files by their cost on 2 cores from a cold compilation cache, dearest first (measured
# with --durations; a file not named here runs after these, in collection order). xdist
# (--dist loadfile --no-loadscope-reorder, setup.cfg) hands files to workers in this order,
# so the long files start first and the short ones fill the gaps at the end, instead of one
# worker finishing a long file alone while the others idle.
COSTLY_FILES = (
  "test_bench.py",
  "test_train.py",
  "test_track.py",
  "test_fit_microscope.py",
  "test_batch.py",
  "test_simulate.py",
  "test_model.py",
  "test_safety.py",
  "test_pretrained.py",
  "test_tissue.py",
  "test_registration.py",
  "test_motion.py",
  "test_pretrained_general.py",
  "test_tfds.py",
  "test_movie.py",
  "test_evaluate.py",
  "test_distributed.py",
  "test_populations.py",
  "test_general.py",
  "test_baselines.py",
)
# Long tests that use no module fixture of their file (or only a cheap one): each is a work
# unit of its own, which another worker may take, rather than part of its file's unit.
SEPARATE_TESTS = (
  "test_bench.py::test_bench_runs_quick",
  "test_bench.py::test_tissue_benches_run_quick",
  "test_train.py::test_four_devices_equal_one_device_for_the_same_global_batch",
  "test_track.py::test_the_readmes_tissue_example_is_corrected",
  "test_track.py::test_defaults_on_movies_of_another_simulator",
  "test_track.py::test_blind_bench_smoke",
  "test_batch.py::test_ctrl_c_stops_the_workers_in_one_line_and_keeps_what_is_done",
  "test_batch.py::test_bench_batch_runs_quick",
  "test_populations.py::test_populations_bench_smoke",
  "test_general.py::test_general_config_trains_exports_and_locates_end_to_end",
)


def _work_unit(nodeid: str) -> str:
  """The xdist work unit of a test: its file, or the test itself (``SEPARATE_TESTS``)."""
  path, _, name = nodeid.partition("::")
  if f"{Path(path).name}::{name.split('[')[0]}" in SEPARATE_TESTS:
    return nodeid
  return path


def pytest_collection_modifyitems(config, items):
  """Orders the collected tests file by file, dearest file first (``COSTLY_FILES``); within a
  file the order is kept. Every worker collects the same order, as xdist requires."""
  rank = {name: i for i, name in enumerate(COSTLY_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_xdist_make_scheduler(config, log):
  """``--dist loadfile``, with ``SEPARATE_TESTS`` as work units of their own."""
  if config.getvalue("dist") != "loadfile":
    return None
  from xdist.scheduler import LoadFileScheduling

  class Scheduling(LoadFileScheduling):
    def _split_scope(self, nodeid: str) -> str:
      return _work_unit(nodeid)

  return Scheduling(config, log)


def pytest_configure(config):
  """Every test process (each xdist worker) uses the persistent compilation cache that the
  scripts it runs use (``cli.use_compilation_cache``): a program compiled once, by a test or
  by a script, is loaded from disk by the others."""
  from qdjax import cli

  cli.use_compilation_cache()


# A cold run of the suite spends much of its time with XLA compiling programs for the CPU.
# The suite compiles at LLVM -O1 rather than XLA's default -O3, and with XLA's CPU loop
# emitters rather than its newer MLIR fusion emitters: every XLA pass is the same, IEEE
# arithmetic is kept (no fast math), and the programs compute the same values up to
# rounding, compiled in about half the time and running up to 1.65x slower
# (``bench.py --what=compile``; docs/results.md, "The test suite's time"). Workers inherit
# these flags, and so do the scripts the tests run, so all share the compilation cache. A
# flag that XLA_FLAGS already names is kept.
SUITE_XLA = {
  "--xla_backend_optimization_level": "1",
  "--xla_cpu_use_fusion_emitters": "false",
}
# Runs whose numbers are not checked (the benchmarks' smoke runs), or are compared only with
# another run under the same flags (one device against four, two processes against one),
# compile at -O0: slower code, less compile time again. Not the smoke runs that are mostly
# registration of tissue motion (the motion, blind and batch benches): their strip
# correlations run so much longer at -O0 that they took 5-30 % less CPU at the suite's
# flags, from a cold cache too (each ``bench.py --what=... --quick`` run alone).
SMOKE_XLA = {"--xla_backend_optimization_level": "0"}
# XLA's own defaults for what ``SUITE_XLA`` changes, as per-compilation options: a test that
# compares bits with a file written under them compiles with them.
XLA_DEFAULT_OPTIONS = {"xla_backend_optimization_level": 3, "xla_cpu_use_fusion_emitters": True}


def _with_flags(flags: str, settings: dict, replace: bool = False) -> str:
  """XLA_FLAGS ``flags`` with ``settings`` (flag -> value) added; a flag ``flags`` already
  names is replaced (``replace``) or kept."""
  words = flags.split()
  if replace:
    words = [word for word in words if word.split("=")[0] not in settings]
  named = {word.split("=")[0] for word in words}
  return " ".join([*words, *(f"{flag}={value}" for flag, value in settings.items()
                             if flag not in named)])  # fmt: skip


os.environ["XLA_FLAGS"] = _with_flags(os.environ.get("XLA_FLAGS", ""), SUITE_XLA)


def smoke_env(env=None) -> dict:
  """``env`` for a smoke run of a script: its XLA_FLAGS (by default the suite's) with the
  suite's flags it does not name, at ``SMOKE_XLA``'s level."""
  env = dict(env or {})
  flags = _with_flags(env.get("XLA_FLAGS", os.environ["XLA_FLAGS"]), SUITE_XLA)
  env["XLA_FLAGS"] = _with_flags(flags, SMOKE_XLA, replace=True)
  return env


def _script_env(env=None) -> dict:
  full_env = {**os.environ, **(env or {})}
  # The scripts import qdjax from this checkout, whatever copy is installed.
  full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
  return full_env


# Variables a script's request may set differently from the server's environment: none is
# read on import (XLA's flags are read when the backend starts, qdjax's cache when a script
# starts, pytest's name of the test running never), so a fork of the server reads the
# request's value.
LATE_VARIABLES = ("XLA_FLAGS", "QDJAX_COMPILATION_CACHE", "PYTEST_CURRENT_TEST")


class ScriptServer:
  """This test process's ``script_server.py``: scripts run in forks of a process that has
  imported their libraries, as ``python script args`` runs them, without each paying for
  the imports again. Started on first use; stopped when the tests end."""

  def __init__(self):
    self.proc = None
    self.env = None
    self.broken = False  # or why the server cannot serve
    self.lock = threading.Lock()

  def _start(self):
    self.env = _script_env()
    # Unbuffered bytes: a reply is read a line at a time, never past its end, so that
    # ``select`` sees whether the next one has come.
    self.proc = subprocess.Popen(
      [sys.executable, str(Path(__file__).with_name("script_server.py"))],
      cwd=REPO,
      env=self.env,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      bufsize=0,
    )
    hello = self._reply()
    if not hello.get("ready"):
      # Then every script runs as a fresh process.
      self.broken = f"the imports left threads running: {hello.get('threads')}"

  def _reply(self) -> dict:
    return json.loads(self.proc.stdout.readline() or b"{}")

  def serves(self, env: dict) -> bool:
    """Whether a script run with ``env`` can be a fork of the server: where ``env`` differs
    from the server's only in ``LATE_VARIABLES``. A server whose environment this process
    has since changed is started again with the new one."""

    def early(variables):
      return {k: v for k, v in variables.items() if k not in LATE_VARIABLES}

    with self.lock:
      if self.proc is not None and early(self.env) != early(_script_env()):
        self.stop()
        self.proc, self.broken = None, False
      if self.proc is None and not self.broken:
        self._start()
      if self.broken or self.proc.poll() is not None:
        return False
    return early(env) == early(self.env)

  def run(self, argv, env, cwd, timeout) -> subprocess.CompletedProcess:
    with self.lock, tempfile.TemporaryDirectory() as streams:
      out, err = Path(streams) / "stdout", Path(streams) / "stderr"
      request = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
      self.proc.stdin.write(json.dumps(request).encode() + b"\n")
      pid = self._reply()["pid"]
      if not select.select([self.proc.stdout], [], [], timeout)[0]:
        os.kill(pid, signal.SIGKILL)  # not yet reaped by the server, so still this script
        self._reply()
        raise subprocess.TimeoutExpired(argv, timeout, out.read_text(), err.read_text())
      reply = self._reply()
      return subprocess.CompletedProcess(
        [sys.executable, *argv], reply["returncode"], out.read_text(), err.read_text()
      )

  def stop(self):
    if self.proc is not None:
      self.proc.stdin.close()  # the server's loop ends
      self.proc.wait(timeout=60)
      self.proc.stdout.close()


SCRIPT_SERVER = ScriptServer()
# Set to 1, every script runs as a fresh process (to compare, or to rule the server out).
FRESH_ENV = "QDJAX_TESTS_FRESH_SCRIPTS"


def pytest_unconfigure(config):
  SCRIPT_SERVER.stop()


def run_script(
  script: str, *args: str, env=None, timeout=600, cwd=REPO, fresh=False
) -> subprocess.CompletedProcess:
  """Runs ``python experiments/<script> args`` (from the repo root), capturing output: as a
  fork of the script server (``ScriptServer``) where it can be, else (or ``fresh``) as a
  new process."""
  argv = [str(REPO / "experiments" / script), *args]
  env = _script_env(env)
  if not (fresh or os.environ.get(FRESH_ENV) == "1") and SCRIPT_SERVER.serves(env):
    return SCRIPT_SERVER.run(argv, env, cwd, timeout)
  return subprocess.run(
    [sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
  )


def interrupt_script(
  script: str, *args: str, started, cwd=REPO, timeout=600, signum=signal.SIGINT
) -> subprocess.CompletedProcess:
  """Runs a script and presses Ctrl-C once it has started working.

  ``started(stderr_so_far) -> bool`` says when (e.g. its progress bar is up). SIGINT goes
  to the whole process group, as a terminal's Ctrl-C does, worker processes included;
  another ``signum`` (SIGTERM) goes to the script's process alone, as ``kill PID`` sends it.
  """
  proc = subprocess.Popen(
    [sys.executable, str(REPO / "experiments" / script), *args],
    cwd=cwd,
    env=_script_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  lines = []
  reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")))
  reader.start()
  deadline = time.monotonic() + timeout
  try:
    while not started("".join(lines)):
      assert proc.poll() is None, "".join(lines)  # it must still be working
      assert time.monotonic() < deadline, "".join(lines)
      time.sleep(0.02)
  except BaseException:
    os.killpg(proc.pid, signal.SIGKILL)  # a failed wait never leaves the run behind
    proc.wait()
    raise
  if signum == signal.SIGINT:
    os.killpg(proc.pid, signum)
  else:
    os.kill(proc.pid, signum)
  stdout = proc.stdout.read()
  proc.wait(timeout=120)
  reader.join()
  return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, "".join(lines))


def assert_one_line_error(
  result: subprocess.CompletedProcess, *needles: str, code: int | None = None
) -> None:
  """A bad-input run: non-zero exit, no traceback, exactly one ``error:`` line naming the problem.

  Every needle must be in that one line (not merely somewhere in stderr). ``code``: the
  exit status expected (2 bad usage or input, 1 other failures, 130 interrupted).
  """
  output = result.stdout + result.stderr
  assert result.returncode != 0, output
  if code is not None:
    assert result.returncode == code, (result.returncode, output)
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


# Bad --methods input that every script choosing methods by name (``locator.parse_methods``)
# must reject in one line, with the text the line must name.
BAD_METHODS = [
  (["--methods=trackpy,sl2pm"], "sl2pm"),
  (["--methods=model", "--workdir=/nonexistent/run"], "/nonexistent/run"),
  (["stray"], "unexpected"),
]


def sim_params(**changes):
  """Small-frame simulation parameters: the simulator's defaults, whose values the physics
  tests spell out in their theory lines (B = 4, peak 3 photons, 0.1 um pixels, ...), on a
  24 x 25 frame at D = 0.3 um^2/s; ``changes`` override them."""
  from qdjax.sim import simulate

  return simulate.make_params(**{"height": 24, "width": 25, "diffusion_um2_s": 0.3, **changes})


@pytest.fixture
def script():
  return run_script
