"""Training and inference throughput: ``python experiments/bench.py --what=train``.

Measured side by side, interleaved in one loop so a busy shared CPU affects all alike:
  - the jitted batch simulation alone (``Experiment.draw_batch``),
  - the whole training step (simulation + forward + backward + SGD, ``train_step``),
  - the SGD step on a ready batch (``train_step_on_batch``),
and inference (forward + decode) on fixed 512-frame chunks. All at the default config
(``experiments/configs/default.py``, passed in by ``experiments/bench.py``), or the tiny
one with ``quick``.
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np

from qdjax.detect import train
from qdjax.sim import data


def _timed(fn):
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def run(config, repeats: int = 5, quick: bool = False) -> dict:
  """Step and inference timings (medians of ``repeats``) at ``config``, a training config."""
  experiment = train.build(config)
  batch = config.batch_size
  state = experiment.state
  fixed = experiment.draw_batch(0)

  holder = {"state": state}

  def step(i):
    holder["state"], out = experiment.train_step(holder["state"], i)
    return out

  def step_on_batch():
    holder["state"], out = experiment.train_step_on_batch(holder["state"], fixed)
    return out

  # Warm up (compile) each, then interleave the timed calls.
  for fn in (lambda: experiment.draw_batch(1), lambda: step(1), step_on_batch):
    jax.block_until_ready(fn())
  inner = 2 if quick else 10  # steps per timing, to average out dispatch jitter
  sim, full, sgd = [], [], []
  for r in range(repeats):
    base = 1000 + r * inner
    sim.append(_timed(lambda b=base: [experiment.draw_batch(b + i) for i in range(inner)]))
    full.append(_timed(lambda b=base: [step(b + i) for i in range(inner)]))
    sgd.append(_timed(lambda: [step_on_batch() for _ in range(inner)]))
  sim_s, full_s, sgd_s = (statistics.median(t) / inner for t in (sim, full, sgd))

  chunk = 64 if quick else train.PREDICT_CHUNK
  frames = data.generate(experiment.sim_params, chunk, seed=123)["images"]
  model_state = holder["state"]["model"]
  jax.block_until_ready(experiment.predict(model_state, frames))
  infer = [_timed(lambda: experiment.predict(model_state, frames)) for _ in range(repeats)]
  infer_s = statistics.median(infer)
  return {
    "config": "tiny" if quick else "default",
    "model": config.model.name,
    "num_params": experiment.num_params,
    "devices": experiment.mesh.size,
    "batch_size": batch,
    "frame": [experiment.sim_params.height, experiment.sim_params.width],
    "train_step_s": full_s,
    "train_frames_per_s": batch / full_s,
    "simulate_batch_s": sim_s,
    "sgd_step_on_ready_batch_s": sgd_s,
    "simulation_fraction_of_step": sim_s / full_s,
    "inference_chunk": chunk,
    "inference_frames_per_s": chunk / infer_s,
    "repeats": repeats,
    "timing": "medians; simulate, full step and ready-batch step interleaved in one loop",
    "host": f"{jax.devices()[0].platform}, {len(jax.devices())} device(s)",
    "numpy": np.__version__,
  }
