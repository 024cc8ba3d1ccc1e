"""The fixed cost of one ``locate`` call on one frame, with and without the compilation cache.

``python experiments/bench.py --what=startup``: wall seconds of whole processes,
``python experiments/locate.py --input=<one 24 x 25 frame> --output=...``, per shipped
model, medians of repeats:

- ``imports``: the interpreter starting and importing what ``locate.py`` imports;
- ``no_cache``: ``QDJAX_COMPILATION_CACHE=0``, so every call compiles its programs;
- ``first_cached``: the first call with an empty cache directory (compiles and stores);
- ``cached``: later calls with that directory (programs read back, not compiled).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import interleaved_medians, process_seconds
from qdjax import cli
from qdjax.detect import inference

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "locate.py"
IMPORTS = (
  "import qdjax.cli, qdjax.detect.inference, qdjax.localize.files, qdjax.localize.locator, "
  "qdjax.sim.presets"
)


def run(repeats: int = 5, quick: bool = False, models: tuple[str, ...] | None = None) -> dict:
  """Times whole ``locate.py`` processes on one frame (see the module docstring).

  Args:
    repeats: processes per measurement (median); 1 with ``quick``.
    quick: one repeat and the default model only.
    models: shipped model names (default: every shipped one).
  """
  repeats = 1 if quick else repeats
  shipped = inference.shipped_models()
  models = (inference.default_model(),) if quick else tuple(models or shipped)
  env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
      filter(None, [str(SCRIPT.parents[1]), os.environ.get("PYTHONPATH")])
    ),
  }
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    frame = Path(tmp) / "frame.npy"
    rng = np.random.default_rng(0)
    np.save(frame, rng.poisson(3.0, (24, 25)).astype(np.float32))

    def locate(name: str, cache: str) -> float:
      output = Path(tmp) / f"{name}.csv"
      output.unlink(missing_ok=True)
      command = [sys.executable, str(SCRIPT), f"--model={name}", f"--input={frame}"]
      return process_seconds(command + [f"--output={output}"], {**env, cli.CACHE_ENV: cache})

    caches = {name: str(Path(tmp) / f"cache_{name}") for name in models}
    first = {name: locate(name, caches[name]) for name in models}
    # Round robin, so that a change of the machine's load falls on every measurement alike.
    fns = {"imports": lambda: process_seconds([sys.executable, "-c", IMPORTS], env)}
    for name in models:
      fns[f"{name}/no_cache"] = lambda name=name: locate(name, "0")
      fns[f"{name}/cached"] = lambda name=name: locate(name, caches[name])
    seconds = interleaved_medians(fns, repeats, warmup=0)
    for name in models:
      rows[name] = {
        "no_cache_s": seconds[f"{name}/no_cache"],
        "first_cached_s": first[name],
        "cached_s": seconds[f"{name}/cached"],
        "cache_bytes": sum(p.stat().st_size for p in Path(caches[name]).iterdir()),
      }
  return {
    "what": "startup",
    "frame": [24, 25],
    "command": "python experiments/locate.py --model=M --input=<one frame .npy> --output=x.csv",
    "repeats": repeats,
    "imports_s": seconds["imports"],
    "rows": rows,
  }
