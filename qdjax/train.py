"""Training the keypoint detector on frames simulated on the device.

    result = train.train_and_evaluate(config, workdir)

Each step draws its batch with ``simulate.simulate_batch(fold_in(data_key, step), ...)``
inside the same jitted function as the SGD update, so the host only hands over a step
number and the batch never leaves the device. Keys: ``key(seed)`` is split once into an
init key and a data key, so a resumed run redraws exactly the batches it would have seen.

Data parallel: the global batch is sharded over a 1-D mesh ``('data',)`` of all local
devices and the state is replicated; the simulation itself is sharded too (threefry keys
are partitionable), and XLA inserts the gradient and BatchNorm all-reduces. The same code
runs on one device or many.

Workdir layout:
  config.json     the config (read by ``qdjax.inference.load``)
  checkpoints/    Orbax: model + optimizer state and progress, every ``checkpoint_every``
  best/           Orbax: the model state with the best validation score so far
  metrics.jsonl   one JSON object per logged step
  result.json     {"auc": {"1": .., "2": .., "3": ..}, "frames_seen": .., ...}
  curves.png      loss and validation AUC against step

A run killed at any moment and restarted with the same command resumes from the last
checkpoint and ends with the same parameters as an uninterrupted run: batches depend only
on the step, the checkpoint holds everything else, and anything logged or saved after that
checkpoint is discarded on restart.

The best checkpoint is chosen by the mean validation AUC over the validation splits and
epsilons 1, 2, 3 px (for the default val_d1..3 splits: the mean of the nine cells of the
study's table), as the study kept the best of its 20 epochs by validation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from qdjax import cli, data, io, metrics, presets, simulate
from qdjax import model as model_lib
from qdjax import prior as prior_lib

PREDICT_CHUNK = 512


def data_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh named 'data' over ``devices`` (default: all local devices)."""
  devices = jax.local_devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), ("data",))


def training_diffusion(config, preset):
  """The D (value or (lo, hi)) to train on: ``config.diffusion`` or the preset's range."""
  if config.get("diffusion") in (None, ""):
    return tuple(preset.train_diffusion)
  value = config.diffusion
  return cli.parse_diffusion(value) if isinstance(value, str) else value


def sim_overrides(config, preset) -> dict[str, Any]:
  """SPEC-named values set in ``config.overrides`` (None keeps the preset's), for training
  and validation frames alike; ``min_particles``/``max_particles`` form ``num_particles``."""
  if "overrides" not in config:
    return {}
  return presets.config_overrides(config.overrides, preset)


def model_settings(config) -> dict[str, Any]:
  """The ``KeypointNet`` overrides set in ``config.model`` (None means the preset's)."""
  return {k: v for k, v in config.model.items() if k != "name" and v is not None}


def create_model(config, rngs: nnx.Rngs) -> model_lib.KeypointNet:
  return model_lib.create(config.model.name, rngs=rngs, **model_settings(config))


def _optimizer_settings(config) -> tuple:
  return (
    float(config.learning_rate),
    int(config.warmup_steps),
    int(config.num_steps),
    str(config.schedule),
    float(config.final_lr_fraction),
    float(config.momentum),
    float(config.weight_decay or 0.0),
    float(config.grad_clip_norm or 0.0),
  )


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warmup to ``learning_rate`` over ``warmup_steps``, then cosine decay (to
  ``final_lr_fraction`` of the peak at ``num_steps``) or constant. The warmup starts at
  peak / warmup_steps, so the first step already learns."""
  return _schedule(*_optimizer_settings(config)[:5])


@functools.lru_cache(maxsize=32)
def _schedule(peak, warmup, steps, schedule, final_fraction) -> optax.Schedule:
  start = peak / max(warmup, 1)
  if schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
      start, peak, warmup, max(steps, warmup + 1), end_value=peak * final_fraction
    )
  if schedule == "constant":
    return optax.join_schedules(
      [optax.linear_schedule(start, peak, max(warmup, 1)), optax.constant_schedule(peak)],
      [warmup],
    )
  raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")


@functools.lru_cache(maxsize=32)
def _transform(peak, warmup, steps, schedule, final_fraction, momentum, weight_decay, clip):
  # Cached, so equal configs give the *same* transform object: it is part of the
  # optimizer's graphdef, a static argument of the jitted steps, and an equal graphdef lets
  # a second run in one process (a resume, a test) reuse the compiled step.
  schedule = _schedule(peak, warmup, steps, schedule, final_fraction)
  tx = optax.sgd(schedule, momentum=momentum, nesterov=True)
  if weight_decay:
    tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx


def create_optimizer(config, model) -> nnx.Optimizer:
  """``nnx.Optimizer(model, optax.sgd(schedule, momentum, nesterov), wrt=nnx.Param)``,
  optionally chained with weight decay and gradient clipping."""
  return nnx.Optimizer(model, _transform(*_optimizer_settings(config)), wrt=nnx.Param)


def check_config(config, num_devices: int) -> None:
  """Raises ValueError naming the first bad setting."""
  for name in ("num_steps", "batch_size", "log_every", "eval_every", "checkpoint_every"):
    value = config[name]
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"config.{name} must be an integer >= 1, got {value!r}")
  if config.batch_size % num_devices:
    raise ValueError(
      f"config.batch_size={config.batch_size} must be divisible by the {num_devices} devices"
    )
  if not (math.isfinite(config.learning_rate) and config.learning_rate > 0):
    raise ValueError(f"config.learning_rate must be > 0, got {config.learning_rate}")
  if not 0 <= config.momentum < 1:
    raise ValueError(f"config.momentum must be in [0, 1), got {config.momentum}")
  if config.warmup_steps < 0:
    raise ValueError(f"config.warmup_steps must be >= 0, got {config.warmup_steps}")
  if config.validation_size < 1:
    raise ValueError(f"config.validation_size must be >= 1, got {config.validation_size}")
  if config.data not in ("simulate", "tfds", "prior"):
    raise ValueError(f"config.data must be 'simulate', 'tfds' or 'prior', got {config.data!r}")
  if config.data == "prior" and "prior" not in config:
    raise ValueError("config.data='prior' needs a config.prior block (qdjax.prior.config())")
  for split in validation_splits(config):
    name = split.split(":")[-1]  # 'preset:split' validates on another preset's frames
    if name not in data.SPLITS or name.startswith("test") or split.count(":") > 1:
      raise ValueError(f"config.validation_splits: {split!r} is not a validation split")


def validation_splits(config) -> list[str]:
  return [s.strip() for s in str(config.validation_splits).split(",") if s.strip()]


@dataclasses.dataclass
class Experiment:
  """Everything a training run compiles, built by ``build``; used by the trainer, the
  benchmark and the tests.

  Attributes:
    config: the ConfigDict.
    mesh: the 1-D 'data' mesh.
    preset: the simulation preset.
    sim_params: training simulation parameters.
    state: {'model': nnx.State, 'opt': nnx.State}, replicated on the mesh.
    data_key: the key whose ``fold_in(step)`` draws batch ``step``.
    train_step: jitted (state, step) -> (state, metrics): simulate a batch, then SGD.
    train_step_on_batch: jitted (state, images, keypoints, present) -> (state, metrics).
    simulate_step: jitted step -> (images, keypoints, present): the batch alone.
    predict: jitted (model_state, images [n, h, w]) -> ``model.decode`` dict.
  """

  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  preset: presets.Preset
  sim_params: simulate.Params
  state: dict
  data_key: jax.Array
  train_step: Callable
  train_step_on_batch: Callable
  simulate_step: Callable
  predict: Callable
  num_params: int
  prior: prior_lib.Prior | None = None

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P("data"))


def _sgd_step(state, images, keypoints, present, graphs, loss_settings, presence_scale=1.0):
  train_graph, _, opt_graph = graphs
  model = nnx.merge(train_graph, state["model"])
  optimizer = nnx.merge(opt_graph, state["opt"])

  def loss_fn(model):
    total, parts = model_lib.loss(model(images), keypoints, present, **dict(loss_settings))
    # The presence term sums over pixels: rescaled, so large frames do not take larger steps.
    return total + (presence_scale - 1.0) * parts["presence"], parts

  (loss, parts), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  optimizer.update(model, grads)
  metrics = {"loss": loss, **parts, "grad_norm": optax.global_norm(grads)}
  return {"model": nnx.state(model), "opt": nnx.state(optimizer)}, metrics


@functools.partial(jax.jit, static_argnums=(3, 4))
def _draw(sim_params, data_key, step, batch_size, batch_sharding):
  """Batch ``step``: simulated from ``fold_in(data_key, step)``, sharded over 'data'."""
  frames = simulate.simulate_batch(jax.random.fold_in(data_key, step), sim_params, batch_size)
  batch = (frames.counts, frames.keypoints, frames.present)
  return jax.lax.with_sharding_constraint(batch, batch_sharding)


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7), donate_argnums=0)
def _simulated_step(
  state, sim_params, data_key, step, graphs, loss_settings, batch_size, shardings
):
  replicated, batch_sharding = shardings
  batch = _draw(sim_params, data_key, step, batch_size, batch_sharding)
  state, metrics = _sgd_step(state, *batch, graphs, loss_settings)
  return jax.lax.with_sharding_constraint((state, metrics), replicated)


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7, 8, 9), donate_argnums=0)
def _prior_step(
  state, base_params, data_key, step, graphs, loss_settings, prior, size, batch_size, shardings
):
  """One SGD step on batch ``step`` drawn from ``prior`` at frame size ``size``."""
  replicated, batch_sharding = shardings
  frames = prior_lib.draw(jax.random.fold_in(data_key, step), prior, base_params, *size, batch_size)
  batch = jax.lax.with_sharding_constraint(
    (frames.counts, frames.keypoints, frames.present), batch_sharding
  )
  scale = prior.reference_area / (size[0] * size[1])
  state, metrics = _sgd_step(state, *batch, graphs, loss_settings, scale)
  return jax.lax.with_sharding_constraint((state, metrics), replicated)


@functools.partial(jax.jit, static_argnums=(4, 5, 6), donate_argnums=0)
def _batch_step(state, images, keypoints, present, graphs, loss_settings, shardings):
  state, metrics = _sgd_step(state, images, keypoints, present, graphs, loss_settings)
  return jax.lax.with_sharding_constraint((state, metrics), shardings[0])


@functools.partial(jax.jit, static_argnums=(2, 3))
def _predict(model_state, images, graphs, decode_settings):
  model = nnx.merge(graphs[1], model_state)
  return model_lib.decode(model(images), **dict(decode_settings))


def build(config, mesh: jax.sharding.Mesh | None = None) -> Experiment:
  """Model, optimizer, keys and the jitted step functions for ``config``."""
  mesh = data_mesh() if mesh is None else mesh
  check_config(config, mesh.size)
  preset = presets.get(config.preset)
  sim_params = preset.sim_params(
    diffusion=training_diffusion(config, preset), **sim_overrides(config, preset)
  )
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))

  key = jax.random.key(config.seed)
  init_key, data_key = jax.random.split(key)
  del key
  model = create_model(config, nnx.Rngs(init_key))
  num_params = model_lib.count_params(model)
  optimizer = create_optimizer(config, model)
  model.train()
  train_graph, model_state = nnx.split(model)
  model.eval()
  eval_graph, _ = nnx.split(model)
  opt_graph, opt_state = nnx.split(optimizer)
  state = jax.device_put({"model": model_state, "opt": opt_state}, replicated)
  data_key = jax.device_put(data_key, replicated)

  # Hashable graphdefs: static arguments of the module-level jitted steps below.
  graphs = (train_graph, eval_graph, opt_graph)
  shardings = (replicated, batch_sharding)
  loss_settings = tuple(sorted(config.loss.items()))
  decode_settings = tuple(sorted(config.decode.items()))
  batch_size = config.batch_size
  prior = prior_lib.from_config(config.prior) if config.data == "prior" else None

  def train_step(state, step):
    if prior is not None:  # each frame size is its own compiled step
      size = prior.frame_size(step)
      step = jnp.asarray(step, jnp.int32)
      return _prior_step(
        state,
        sim_params,
        data_key,
        step,
        graphs,
        loss_settings,
        prior,
        size,
        batch_size,
        shardings,
      )
    step = jnp.asarray(step, jnp.int32)
    return _simulated_step(
      state, sim_params, data_key, step, graphs, loss_settings, batch_size, shardings
    )

  def train_step_on_batch(state, images, keypoints, present):
    batch = jax.device_put((images, keypoints, present), batch_sharding)
    return _batch_step(state, *batch, graphs, loss_settings, shardings)

  def simulate_step(step):
    step = jnp.asarray(step, jnp.int32)
    return _draw(sim_params, data_key, step, batch_size, batch_sharding)

  def predict(model_state, images):
    return _predict(model_state, images, graphs, decode_settings)

  return Experiment(
    config=config,
    mesh=mesh,
    preset=preset,
    sim_params=sim_params,
    state=state,
    data_key=data_key,
    train_step=train_step,
    train_step_on_batch=train_step_on_batch,
    simulate_step=simulate_step,
    predict=predict,
    num_params=num_params,
    prior=prior,
  )


def predict_lists(predict: Callable, model_state, images: np.ndarray, chunk: int = PREDICT_CHUNK):
  """Runs a jitted ``predict`` over [n, h, w] frames in fixed-size chunks (the last one
  padded, so one compilation serves all) -> list of [k, 3] (x, y, score) per frame."""
  out = []
  for start in range(0, len(images), chunk):
    block = np.asarray(images[start : start + chunk], np.float32)
    keep = len(block)
    if keep < chunk and len(images) > chunk:
      block = np.concatenate([block, np.zeros((chunk - keep,) + block.shape[1:], np.float32)])
    out.extend(model_lib.to_lists(predict(model_state, block))[:keep])
  return out


def validation_sets(config, experiment: Experiment) -> dict[str, dict[str, np.ndarray]]:
  """The fixed validation frames: each split from its own derived seed
  (``data.split_seed(config.validation_seed, split)``), never from the training key.
  A split named 'preset:split' is that preset's split (without ``config.overrides``)."""
  sets = {}
  for split in validation_splits(config):
    if ":" in split:  # another preset's split, e.g. 'invivo:val_d1', at its own values
      preset_name, name = split.split(":")
      params = data.split_params(presets.get(preset_name), name)
      frames = data.generate(
        params, config.validation_size, data.split_seed(config.validation_seed, name)
      )
      sets[split] = {k: frames[k] for k in ("images", "keypoints", "present")}
      continue
    if split in ("validation", "train"):
      params = experiment.sim_params  # the training distribution, incl. a --diffusion choice
    else:
      params = data.split_params(
        experiment.preset, split, **sim_overrides(config, experiment.preset)
      )
    seed = data.split_seed(config.validation_seed, split)
    frames = data.generate(params, config.validation_size, seed)
    sets[split] = {k: frames[k] for k in ("images", "keypoints", "present")}
  return sets


def evaluate(predict, model_state, sets, epsilons) -> dict[str, Any]:
  """Validation AUCs per split and pooled, and the selection score.

  Returns:
    {"auc": {eps: pooled AUC}, "auc_by_split": {split: {eps: AUC}}, "score": mean of the
    per-split AUCs over splits and epsilons}.
  """
  by_split, pooled_dets, pooled_kp, pooled_present = {}, [], [], []
  for split, frames in sets.items():
    dets = predict_lists(predict, model_state, frames["images"])
    by_split[split] = {
      _eps_key(e): metrics.auc(dets, frames["keypoints"], frames["present"], e) for e in epsilons
    }
    pooled_dets += dets
    pooled_kp.append(frames["keypoints"])
    pooled_present.append(frames["present"])
  kp, present = np.concatenate(pooled_kp), np.concatenate(pooled_present)
  pooled = {_eps_key(e): metrics.auc(pooled_dets, kp, present, e) for e in epsilons}
  score = float(np.mean([v for cells in by_split.values() for v in cells.values()]))
  return {"auc": pooled, "auc_by_split": by_split, "score": score}


def _eps_key(epsilon: float) -> str:
  return f"{epsilon:g}"


# --- checkpoints -------------------------------------------------------------------------


def _pure(state):
  return jax.tree.map(lambda s: s.to_pure_dict(), state, is_leaf=lambda x: isinstance(x, nnx.State))


def _abstract(pure_tree, sharding):
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), pure_tree
  )


def _restore_into(state, pure_tree):
  """nnx.State(s) with the values of a restored pure-dict tree."""
  out = {}
  for name, sub in state.items():
    sub = jax.tree.map(lambda x: x, sub)  # a copy: nnx.replace_by_pure_dict mutates
    nnx.replace_by_pure_dict(sub, pure_tree[name])
    out[name] = sub
  return out


def _manager(directory: Path, max_to_keep: int) -> ocp.CheckpointManager:
  if directory.exists() and not directory.is_dir():
    raise ValueError(f"checkpoint path is not a directory: {directory}")
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
  )
  return ocp.CheckpointManager(directory.absolute(), options=options)


def _restore(manager: ocp.CheckpointManager, step: int, items: dict[str, Any]):
  """Restores ``items`` (name -> abstract pytree, or None for JSON) at ``step``.

  Raises:
    ValueError: one line, if the checkpoint is corrupt or does not match the model.
  """
  args = {
    name: ocp.args.JsonRestore() if abstract is None else ocp.args.StandardRestore(abstract)
    for name, abstract in items.items()
  }
  try:
    return manager.restore(step, args=ocp.args.Composite(**args))
  except Exception as e:  # Orbax/TensorStore raise many types on a damaged directory
    detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    raise ValueError(
      f"checkpoint {manager.directory}/{step} is corrupt or does not match this model "
      f"({type(e).__name__}: {detail}); delete it to start over"
    ) from None


# --- logging -------------------------------------------------------------------------------


def _read_records(path: Path, last_step: int) -> list[dict]:
  """metrics.jsonl records up to ``last_step`` (later ones belong to a killed run)."""
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut short by a kill
    if record.get("step", math.inf) <= last_step:
      records.append(record)
  return records


def plot_curves(records: list[dict], path: Path) -> None:
  """Training loss and validation AUC (per epsilon) against step, as a PNG."""
  # A bare Figure renders with Agg and needs no pyplot (no GUI backend, no global state).
  from matplotlib.figure import Figure

  train = [r for r in records if "loss" in r]
  val = [r for r in records if "val_auc" in r]
  fig = Figure(figsize=(10, 3.8))
  ax_loss, ax_auc = fig.subplots(1, 2)
  if train:
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    ax_loss.set_yscale("log")
  ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
  for eps in val[0]["val_auc"] if val else []:
    steps = [r["step"] for r in val]
    ax_auc.plot(steps, [r["val_auc"][eps] for r in val], marker="o", ms=3, label=f"eps {eps} px")
  if val:
    ax_auc.legend(fontsize=8)
  ax_auc.set(
    xlabel="step", ylabel="validation AUC", title="validation (pooled splits)", ylim=(0, 1)
  )
  fig.tight_layout()
  io.save_figure(fig, path, dpi=100)


# --- the loop ------------------------------------------------------------------------------


def train_and_evaluate(config, workdir, *, stop_after: int | None = None) -> dict[str, Any]:
  """Trains (resuming from ``workdir`` if it holds a checkpoint) and evaluates.

  Args:
    config: ConfigDict (see experiments/configs/default.py).
    workdir: output directory (created).
    stop_after: for tests: return right after this step, as if killed there (nothing
      beyond the last regular checkpoint is saved).

  Returns:
    The result dict also written to ``workdir/result.json``.

  Raises:
    ValueError: bad config, or a corrupt checkpoint.
  """
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise ValueError(f"workdir is not a directory: {workdir}")
  workdir.mkdir(parents=True, exist_ok=True)
  experiment = build(config)
  epsilons = experiment.preset.epsilons_px

  checkpoints = _manager(workdir / "checkpoints", config.keep_checkpoints)
  best = _manager(workdir / "best", 1)
  state = experiment.state
  sim_record = experiment.sim_params.to_dict()
  if experiment.prior is not None:  # the base geometry, and the per-frame distribution
    sim_record["prior"] = experiment.prior.to_dict()
  sim_record = json.loads(json.dumps(sim_record))
  meta = {
    "step": 0,
    "best_score": -1.0,
    "best_step": None,
    "best_eval": None,
    "sim_params": sim_record,
  }
  latest = checkpoints.latest_step()
  if latest is not None:
    abstract = _abstract(_pure(state), experiment.replicated)
    restored = _restore(checkpoints, latest, {"state": abstract, "meta": None})
    state = jax.device_put(_restore_into(state, restored["state"]), experiment.replicated)
    meta = restored["meta"]
    if meta.get("sim_params", sim_record) != sim_record:
      changed = sorted(k for k in sim_record if meta["sim_params"].get(k) != sim_record[k])
      raise ValueError(
        f"the simulation parameters changed since {workdir} was checkpointed "
        f"({', '.join(changed)}; e.g. a new preset calibration): resuming would mix two "
        "training distributions; use a new --workdir"
      )
    if config.progress:
      print(f"resuming from {checkpoints.directory} at step {latest}", flush=True)
  io.write_text(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")
  # The command line that (re)started this run, recorded for the shipped model's provenance.
  io.write_text(
    workdir / "run.json",
    json.dumps(
      {
        "command": shlex.join(sys.argv),
        "seed": config.seed,
        "sim_params": sim_record,
        "preset": experiment.preset.to_dict(),
      },
      indent=2,
    )
    + "\n",
  )
  start = meta["step"]
  for step in best.all_steps():
    if step > start:  # saved after the checkpoint we resume from: it will be redone
      best.delete(step)
  metrics_path = workdir / "metrics.jsonl"
  records = _read_records(metrics_path, start)
  io.write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in records))

  logging.info(
    "model %s: %d parameters; %d devices; batch %d",
    config.model.name,
    experiment.num_params,
    experiment.mesh.size,
    config.batch_size,
  )
  sets = validation_sets(config, experiment)
  batches = None
  if config.data == "tfds":
    from qdjax.datasets import loader  # only this branch needs the TFDS reader

    batches = loader.iterate_batches(
      config.tfds_data_dir,
      config.tfds_name,
      config.tfds_split,
      config.batch_size,
      config.seed,
      start,
    )

  bar = tqdm(
    total=config.num_steps, initial=start, unit="step", disable=not config.progress, desc="train"
  )
  tick, tick_step = time.perf_counter(), start
  # Training metrics are summed on the device between log steps (no host sync per step)
  # and logged as their mean over the interval.
  interval_sum, interval_steps = None, 0
  with metrics_path.open("a") as log:
    for step in range(start + 1, config.num_steps + 1):
      if batches is None:
        state, step_metrics = experiment.train_step(state, step)
      else:
        batch = next(batches)
        state, step_metrics = experiment.train_step_on_batch(
          state, batch["images"], batch["keypoints"], batch["present"]
        )
      bar.update(1)
      interval_steps += 1
      interval_sum = (
        step_metrics if interval_sum is None else jax.tree.map(jnp.add, interval_sum, step_metrics)
      )
      record = {}
      last = step == config.num_steps
      if step % config.log_every == 0 or last:
        values = {k: float(v) / interval_steps for k, v in jax.device_get(interval_sum).items()}
        interval_sum, interval_steps = None, 0
        now = time.perf_counter()
        rate = (step - tick_step) * config.batch_size / max(now - tick, 1e-9)
        tick, tick_step = now, step
        record.update(values)
        record["frames_per_s"] = rate
        record["learning_rate"] = float(learning_rate_schedule(config)(step - 1))
        bar.set_postfix(loss=f"{values['loss']:.3f}", frames_s=f"{rate:.0f}")
      if step % config.eval_every == 0 or last:
        result = evaluate(experiment.predict, state["model"], sets, epsilons)
        record["val_auc"] = result["auc"]
        record["val_auc_by_split"] = result["auc_by_split"]
        record["val_score"] = result["score"]
        if result["score"] > meta["best_score"]:
          meta.update(best_score=result["score"], best_step=step, best_eval=result)
          best.save(
            step,
            args=ocp.args.Composite(
              model=ocp.args.StandardSave(_pure(state["model"])),
              meta=ocp.args.JsonSave({"step": step, **result}),
            ),
          )
        bar.write(
          f"step {step}: validation AUC "
          + " ".join(f"eps{k}={v:.3f}" for k, v in result["auc"].items())
          + f" (score {result['score']:.3f})"
        )
        # Validation time is not training time: restart the frames/s clock.
        tick, tick_step = time.perf_counter(), step
      if record:
        record = {"step": step, "frames_seen": step * config.batch_size, **record}
        log.write(json.dumps(record) + "\n")
        log.flush()
        records.append(record)
      if step % config.checkpoint_every == 0 or last:
        meta["step"] = step
        checkpoints.save(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardSave(_pure(state)), meta=ocp.args.JsonSave(dict(meta))
          ),
        )
      if stop_after is not None and step >= stop_after:
        bar.close()
        checkpoints.wait_until_finished()
        best.wait_until_finished()
        return {"stopped_at": step}
  bar.close()
  checkpoints.wait_until_finished()
  best.wait_until_finished()
  checkpoints.close()
  best.close()

  best_eval = meta["best_eval"]
  result = {
    "auc": best_eval["auc"],
    "auc_by_split": best_eval["auc_by_split"],
    "frames_seen": config.num_steps * config.batch_size,
    "best_step": meta["best_step"],
    "selection": "mean validation AUC over splits "
    f"({', '.join(sets)}) and epsilons {', '.join(_eps_key(e) for e in epsilons)} px",
    "validation_frames_per_split": config.validation_size,
    "num_params": experiment.num_params,
  }
  io.write_text(workdir / "result.json", json.dumps(result, indent=2) + "\n")
  plot_curves(records, workdir / "curves.png")
  return result


def final_params(workdir) -> dict:
  """The model state (pure dict of NumPy arrays) of the latest checkpoint, for tests."""
  manager = _manager(Path(workdir) / "checkpoints", 1)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}")
  restored = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
  )
  manager.close()
  return jax.tree.map(np.asarray, restored["state"]["model"])
