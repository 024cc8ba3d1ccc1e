"""Runs the experiments' scripts for the tests in forks of one process that has imported
their libraries already.

Started by ``conftest.run_script`` with the environment the scripts get. It imports what the
scripts import (JAX, Flax, Optax, Orbax, trackpy, pandas, matplotlib, qdjax: several seconds
of CPU a process) without starting JAX's backend, then reads one request a line on stdin, a
JSON object::

  {"argv": [script, arg, ...], "cwd": ..., "env": {...}, "stdout": path, "stderr": path}

For each it forks. The child takes the request's environment, directory, argv and standard
streams, and runs the script as ``python script args`` runs it, as ``__main__``, to its own
exit: an uncaught exception prints its traceback and exits 1, ``sys.exit`` exits with its
code, atexit handlers run. The server writes the child's pid on stdout when it starts and
its exit status (``subprocess``'s ``returncode``: -N for signal N) when it ends.

XLA reads its flags (``XLA_FLAGS``) when the backend starts, which is in the child, so a
request may change them; a request that changes anything else in the environment (variables
read on import) runs as a fresh process instead (conftest).
"""

import importlib
import json
import os
import sys
import threading

# What the scripts import, heaviest first; each is imported here once, for every script.
MODULES = (
  "jax",
  "jax.numpy",
  "flax.nnx",
  "optax",
  "orbax.checkpoint",
  "ml_collections",
  "absl.app",
  "absl.flags",
  "absl.logging",
  "numpy",
  "scipy.ndimage",
  "scipy.optimize",
  "scipy.stats",
  "pandas",
  "trackpy",
  "tifffile",
  "matplotlib",
  "matplotlib.pyplot",
  "qdjax",
  "qdjax.api",
  "qdjax.cli",
  "qdjax.io",
  "qdjax.plotting",
  "qdjax.detect.train",
  "qdjax.detect.shipped",
  "qdjax.localize.files",
  "qdjax.localize.locator",
  "qdjax.microscope.fit",
  "qdjax.sim.data",
  "qdjax.sim.presets",
  "qdjax.tracks.batch",
  "qdjax.tracks.tracking",
)


def _serve():
  """Answers requests until stdin closes; returns a request in each child it forks."""
  # The scripts draw off-screen (``cli.run`` sets this before anything draws); matplotlib
  # reads it on import.
  os.environ.setdefault("MPLBACKEND", "Agg")
  for name in MODULES:
    try:
      importlib.import_module(name)
    except ImportError:
      pass  # an optional dependency; the script will say what is missing
  # A fork copies only the thread that forks: a lock another thread held would stay locked
  # in the child. No Python thread may run here; the native thread pools that numpy's and
  # scipy's OpenBLAS and pyarrow's jemalloc start on import handle a fork themselves
  # (pthread_atfork), as they must under multiprocessing's default start method on Linux.
  # JAX's backend, whose threads do not, starts in each child.
  ready = threading.active_count() == 1
  threads = [thread.name for thread in threading.enumerate()]
  print(json.dumps({"ready": ready, "threads": threads}), flush=True)
  if not ready:
    return None
  for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
      return request
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
  return None


def _become(request) -> None:
  """This child takes the script's environment, directory, arguments and streams."""
  os.chdir(request["cwd"])
  os.environ.clear()
  os.environ.update(request["env"])
  script = request["argv"][0]
  sys.argv = list(request["argv"])
  sys.path[0] = os.path.dirname(os.path.abspath(script))  # as ``python script`` sets it
  null = os.open(os.devnull, os.O_RDONLY)
  os.dup2(null, 0)
  for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
    os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)


if __name__ == "__main__":
  request = _serve()
  if request is None:
    sys.exit(0)
  _become(request)
  import runpy

  # Not caught here: the script's exit is this process's, as with ``python script``.
  runpy.run_path(request["argv"][0], run_name="__main__")
