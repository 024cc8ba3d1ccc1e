"""What XLA's CPU compiler settings cost and buy: compile time, run time and the values of
qdjax's main programs compiled with XLA's defaults (LLVM -O3, the MLIR fusion emitters) and
with the settings the test suite uses (``SETTINGS``), side by side in one process.

``python experiments/bench.py --what=compile``. Per program and setting:

- ``compile_s``: XLA compiling the lowered program (no cache, on disk or in memory), median;
- ``run_s``: one call of the compiled program, median, the settings run in turn;
- ``max_abs_diff``: the largest difference of any output from the defaults' (0: the same
  bits); for the MLE fit, ``max_position_diff_px``: that of the fitted positions, over the
  fits valid under both settings (a fit that fails can end anywhere).

The programs: the default detector on a stack of fields, the Poisson MLE fit of a stack
of crops, simulated frames (``qdjax.sim.simulate``), a batch of movies
(``qdjax.sim.movie``), and one SGD step of the training config (``config``).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import interleaved_medians
from qdjax.detect import inference, train
from qdjax.localize import mle
from qdjax.sim import movie, presets, simulate

_LEVEL, _FUSION = "xla_backend_optimization_level", "xla_cpu_use_fusion_emitters"
# name -> per-compilation XLA options, named in full so that XLA_FLAGS cannot change them. O3
# is XLA's default and every other row's reference; "loops": XLA's CPU loop emitters instead
# of its MLIR fusion emitters.
SETTINGS = {
  "O3": {_LEVEL: 3, _FUSION: True},
  "O1": {_LEVEL: 1, _FUSION: True},
  "O0": {_LEVEL: 0, _FUSION: True},
  "O1_loops": {_LEVEL: 1, _FUSION: False},
  "O0_loops": {_LEVEL: 0, _FUSION: False},
}
QUICK_SETTINGS = ("O3", "O1_loops")


def _programs(config, quick: bool) -> dict:
  """name -> (jitted function, lowering arguments[, call arguments, fresh(call) -> call]);
  with ``quick`` the detector and the MLE fit alone, on small inputs."""
  rng = np.random.default_rng(0)
  locator = inference.load(inference.pretrained_dir(inference.default_model()))
  size = 24 if quick else 96
  fields = jnp.asarray(rng.poisson(4.0, (8 if quick else 64, size, size)).astype(np.float32))
  programs = {"detector": (locator._run, (locator._state, fields, jnp.float32(0.1)))}
  # Crops of one spot (sigma 1.5 px, 30 photons at its peak) at random sub-pixel places
  # on a background of 3 photons.
  n = 16 if quick else 256
  yy, xx = np.mgrid[:24, :25]
  x0, y0 = rng.uniform(8, 16, (2, n, 1, 1))
  spots = 3.0 + 30.0 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.5**2))
  crops = jnp.asarray(rng.poisson(spots).astype(np.float32))
  programs["mle_fit"] = (jax.jit(lambda images: mle._fit_batch(images, mle.Config())), (crops,))
  if quick:
    return programs
  params = presets.get("paper").sim_params(diffusion=0.5)
  programs["simulate_frames"] = (
    simulate._render_indices,
    (jax.random.key(0), params, jnp.arange(256)),
  )
  movie_params = movie.make_params(presets.get("invivo").sim_params(diffusion=0.2), num_frames=50)
  programs["movies"] = (
    movie.simulate_movies,
    (jax.random.key(0), movie_params, 4),
    (jax.random.key(0), movie_params),
  )
  experiment = train.build(config)
  batch = experiment.draw_batch(1)
  state = experiment.state
  # The step donates its state: every call gets a copy of the same one.
  programs["train_step"] = (
    experiment.train_step_on_batch,
    (state, batch),
    (state, batch),
    lambda call: (jax.tree.map(jnp.copy, call[0]), call[1]),
  )
  return programs


def _caller(compiled, fresh, call):
  """``compiled`` called on ``fresh(call)``, waited for."""
  return lambda: jax.block_until_ready(compiled(*fresh(call)))


def _max_abs_diff(a, b) -> float:
  diffs = [
    float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    if np.issubdtype(np.asarray(x).dtype, np.number)
  ]
  return max(diffs, default=0.0)


def run(repeats: int = 5, quick: bool = False, config=None) -> dict:
  """Compiles and runs each program under each of ``SETTINGS`` (the module docstring).

  Args:
    repeats: compilations and calls per program and setting (medians); 1 with ``quick``.
    quick: the detector and the MLE fit alone, small inputs, one repeat, XLA's defaults
      and the test suite's setting (``QUICK_SETTINGS``).
    config: the training config of ``train_step``.
  """
  repeats = 1 if quick else repeats
  settings = {name: SETTINGS[name] for name in QUICK_SETTINGS} if quick else SETTINGS
  rows = {}
  cache = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    for name, (fn, lower_args, *rest) in _programs(config, quick).items():
      call = rest[0] if rest else lower_args
      fresh = rest[1] if len(rest) > 1 else (lambda c: c)
      lowered = fn.lower(*lower_args)
      compile_s = {setting: [] for setting in settings}
      compiled = {}
      for _ in range(repeats):
        for setting, options in settings.items():
          jax.clear_caches()  # a compilation, not JAX's in-memory copy of the last one
          start = time.perf_counter()
          compiled[setting] = lowered.compile(compiler_options=options)
          compile_s[setting].append(time.perf_counter() - start)
      outputs = {setting: jax.device_get(compiled[setting](*fresh(call))) for setting in settings}
      reference = outputs["O3"]
      run_s = interleaved_medians(
        {setting: _caller(compiled[setting], fresh, call) for setting in settings},
        repeats=max(repeats, 3),
      )
      rows[name] = {
        setting: {
          "options": options,
          "compile_s": statistics.median(compile_s[setting]),
          "run_s": run_s[setting],
          "max_abs_diff": _max_abs_diff(outputs[setting], reference),
        }
        for setting, options in settings.items()
      }
      if name == "mle_fit":
        for setting in settings:
          both = outputs[setting].valid & reference.valid
          rows[name][setting]["max_position_diff_px"] = _max_abs_diff(
            outputs[setting].params[both, 2:4], reference.params[both, 2:4]
          )
      for setting, row in rows[name].items():
        if setting != "O3":
          row["compile_vs_O3"] = row["compile_s"] / rows[name]["O3"]["compile_s"]
          row["run_vs_O3"] = row["run_s"] / rows[name]["O3"]["run_s"]
  finally:
    jax.config.update("jax_enable_compilation_cache", cache)
  return {
    "what": "compile",
    "device": str(jax.devices()[0]),
    "repeats": repeats,
    "timing": "medians; settings compiled and run in turn; no compilation cache",
    "rows": rows,
  }
