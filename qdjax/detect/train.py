"""Training the keypoint detector on frames simulated on the device.

    result = train.train_and_evaluate(config, workdir)

Batches come from a source chosen by ``config.data`` (``qdjax.detect.sources``): by default
``simulate.simulate_batch(fold_in(data_key, step), ...)``, drawn inside the same jitted
function as the SGD update, so the host only hands over a step number and the batch never
leaves the device. Keys: ``key(seed)`` is split once into an init key and a data key, so a
resumed run redraws exactly the batches it would have seen. Validation (the fixed frames
and the score that picks the best step) is ``qdjax.detect.validation``; the Orbax checkpoints are
``qdjax.detect.checkpoint``.

Data parallel: the global batch is sharded over a 1-D mesh ``('data',)`` of all devices
and the state is replicated; the simulation itself is sharded too (threefry keys are
partitionable), and XLA inserts the gradient and BatchNorm all-reduces. The same code
runs on one device or many.

Several processes (hosts): call ``initialize_distributed`` (``jax.distributed``) before
anything else touches JAX, and run the same command in every process. The mesh then spans
the devices of all processes (``jax.devices()``); each device simulates its own slice of the
step's global batch, which is the same whatever the number of processes. A host-side source
(``tfds``) is read whole by every process, and each process puts only its devices' rows on
them. Every process validates, and process 0's scores (broadcast) pick the best step, so all
processes save the same checkpoints; Orbax coordinates the saves. Only process 0 writes the
workdir's other files (config, run record, metrics, result, curves) and prints progress. The
workdir must be one directory that all processes see (a shared file system).

Workdir layout:
  config.json     the config (read by ``qdjax.detect.inference.load``)
  checkpoints/    Orbax: model + optimizer state and progress, every ``checkpoint_every``
  best/           Orbax: the model state with the best validation score so far
  metrics.jsonl   one JSON object per logged step
  result.json     {"auc": {"1": .., "2": .., "3": ..}, "frames_seen": .., ...}
  curves.png      loss and validation AUC against step

A run killed at any moment and restarted with the same command resumes from the last
checkpoint and ends with the same parameters as an uninterrupted run: batches depend only
on the step, the checkpoint holds everything else, and anything logged or saved after that
checkpoint is discarded on restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from qdjax import chunks, cli, io
from qdjax.detect import checkpoint, head, sources, validation
from qdjax.detect import model as model_lib
from qdjax.sim import presets, simulate

_LOG = logging.getLogger(__name__)

PREDICT_CHUNK = 512


# What ``initialize_distributed`` reads when an argument is not given: JAX reads the first
# itself; the other two are read here.
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  auto: bool = False,
) -> bool:
  """Joins a multi-process run (``jax.distributed.initialize``) when one is asked for.

  Call it in every process before anything else uses JAX. An argument left None is taken
  from ``$JAX_COORDINATOR_ADDRESS``, ``$JAX_NUM_PROCESSES`` or ``$JAX_PROCESS_ID``; what is
  still unset JAX detects from the cluster (SLURM, Open MPI, Cloud TPU). With no argument,
  none of those variables and ``auto`` False, nothing is initialised: a single process.

  Args:
    coordinator_address: 'host:port' of process 0, where it serves the coordinator.
    num_processes: the number of processes.
    process_id: this process's index, 0 .. num_processes - 1.
    auto: initialise even when nothing above is set, from the cluster's environment alone.

  Returns:
    Whether ``jax.distributed`` was initialised.

  Raises:
    ValueError: a bad value, or settings that JAX cannot complete from the environment.
  """
  coordinator_address = coordinator_address or os.environ.get(COORDINATOR_ENV) or None
  num_processes = _int_setting(num_processes, "num_processes", NUM_PROCESSES_ENV)
  process_id = _int_setting(process_id, "process_id", PROCESS_ID_ENV)
  if not auto and (coordinator_address, num_processes, process_id) == (None, None, None):
    return False
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"num_processes must be >= 1, got {num_processes}")
  if process_id is not None and not 0 <= process_id < (num_processes or math.inf):
    raise ValueError(f"process_id must be in [0, num_processes), got {process_id}")
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except ValueError as e:  # what the cluster's environment could not supply
    raise ValueError(
      f"cannot start jax.distributed ({str(e).strip() or type(e).__name__}): give the "
      "coordinator address, number of processes and process id, or run in a SLURM, Open MPI "
      "or TPU job"
    ) from None
  return True


def _int_setting(value, name: str, variable: str) -> int | None:
  if value is not None:
    return int(value)
  text = os.environ.get(variable, "").strip()
  if not text:
    return None
  try:
    return int(text)
  except ValueError:
    raise ValueError(f"${variable} ({name}) must be an integer, got {text!r}") from None


def data_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh named 'data' over ``devices`` (default: all devices, of every process)."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), ("data",))


def on_mesh(tree, sharding: NamedSharding):
  """A pytree of arrays (the same global values in every process, e.g. NumPy arrays or a
  state made from the same key) on ``sharding``. Across processes each process puts only
  the pieces of its own devices."""
  if sharding.is_fully_addressable:
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda x: _global_array(x, sharding), tree)


def _global_array(x, sharding: NamedSharding) -> jax.Array:
  if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
    data = _global_array(jax.random.key_data(x), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def same_on_all_processes(tree):
  """Process 0's values of a pytree of numbers, exactly, in every process.

  A validation score computed in each process could round differently on different
  machines; the best step must still be one choice."""
  if jax.process_count() == 1:
    return tree
  leaves, treedef = jax.tree.flatten(tree)
  # float64 as pairs of uint32 words: the broadcast keeps every bit without jax_enable_x64.
  words = np.asarray(leaves, np.float64).view(np.uint32)
  words = np.asarray(multihost_utils.broadcast_one_to_all(words))
  values = words.view(np.float64)
  return jax.tree.unflatten(treedef, [type(a)(b) for a, b in zip(leaves, values, strict=True)])


def training_diffusion(config, preset):
  """The D (value or (lo, hi)) to train on: ``config.diffusion`` or the preset's range."""
  if config.get("diffusion") in (None, ""):
    return tuple(preset.train_diffusion)
  value = config.diffusion
  return cli.parse_diffusion(value) if isinstance(value, str) else value


def sim_overrides(config, preset) -> dict[str, Any]:
  """Simulation values set in ``config.overrides`` (None keeps the preset's), for training
  and validation frames alike; ``min_particles``/``max_particles`` form ``num_particles``."""
  if "overrides" not in config:
    return {}
  return presets.config_overrides(config.overrides, preset)


def model_settings(config) -> dict[str, Any]:
  """The ``KeypointNet`` overrides set in ``config.model`` (None means the preset's)."""
  return {k: v for k, v in config.model.items() if k != "name" and v is not None}


def create_model(config, rngs: nnx.Rngs) -> model_lib.KeypointNet:
  return model_lib.create(config.model.name, rngs=rngs, **model_settings(config))


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warmup to ``learning_rate`` over ``warmup_steps``, then cosine decay (to
  ``final_lr_fraction`` of the peak at ``num_steps``) or constant. The warmup starts at
  peak / warmup_steps, so the first step already learns."""
  peak, warmup = float(config.learning_rate), int(config.warmup_steps)
  start = peak / max(warmup, 1)
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
      start,
      peak,
      warmup,
      max(int(config.num_steps), warmup + 1),
      end_value=peak * float(config.final_lr_fraction),
    )
  if config.schedule == "constant":
    return optax.warmup_constant_schedule(start, peak, warmup)
  raise ValueError(f"schedule must be 'cosine' or 'constant', got {config.schedule!r}")


def create_optimizer(config, model) -> nnx.Optimizer:
  """``nnx.Optimizer(model, optax.sgd(schedule, momentum, nesterov), wrt=nnx.Param)``,
  optionally chained with weight decay and gradient clipping."""
  tx = optax.sgd(learning_rate_schedule(config), momentum=float(config.momentum), nesterov=True)
  if config.weight_decay:
    tx = optax.chain(optax.add_decayed_weights(float(config.weight_decay)), tx)
  if config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(float(config.grad_clip_norm)), tx)
  return nnx.Optimizer(model, tx, wrt=nnx.Param)


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
  if config.data not in sources.SOURCES:
    raise ValueError(
      f"config.data must be one of {', '.join(sources.SOURCES)}, got {config.data!r}"
    )
  validation.check_splits(config)


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
    source: where the batches come from (``qdjax.detect.sources``).
    train_step: (state, step) -> (state, metrics): draw batch ``step``, then one SGD step;
      jitted as one function for a device source.
    train_step_on_batch: jitted (state, Batch) -> (state, metrics).
    draw_batch: step -> Batch, sharded over 'data' (jitted for a device source).
    predict: jitted (model_state, images [n, h, w]) -> ``head.decode`` dict.
    num_params: the model's parameter count.
  """

  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  preset: presets.Preset
  sim_params: simulate.Params
  state: dict
  source: sources.Source
  train_step: Callable
  train_step_on_batch: Callable
  draw_batch: Callable
  predict: Callable
  num_params: int

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def locate(self, model_state, images, chunk: int = PREDICT_CHUNK) -> list[np.ndarray]:
    """images [n, h, w] -> list of n [k, 3] (x, y, score), in chunks of ``chunk`` frames."""
    run = functools.partial(self.predict, model_state)
    return head.to_lists(chunks.map_chunks(run, np.asarray(images, np.float32), chunk))


def build(config, mesh: jax.sharding.Mesh | None = None) -> Experiment:
  """Model, optimizer, keys, the batch source and the jitted step functions for ``config``."""
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
  state = on_mesh({"model": model_state, "opt": opt_state}, replicated)
  data_key = on_mesh(data_key, replicated)
  source = sources.make(config, preset=preset, sim_params=sim_params, data_key=data_key)
  loss_settings = dict(config.loss)
  decode_settings = dict(config.decode)

  def sgd_step(state, batch: sources.Batch):
    model = nnx.merge(train_graph, state["model"])
    optimizer = nnx.merge(opt_graph, state["opt"])
    height, width = batch.images.shape[-2:]
    area = source.reference_area
    presence_scale = 1.0 if area is None else area / (height * width)

    def loss_fn(model):
      outputs = model(batch.images)
      total, parts = head.loss(outputs, batch.keypoints, batch.present, **loss_settings)
      # The presence term sums over pixels: rescaled, so large frames do not take larger steps.
      return total + (presence_scale - 1.0) * parts["presence"], parts

    (loss, parts), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    metrics = {"loss": loss, **parts, "grad_norm": optax.global_norm(grads)}
    state = {"model": nnx.state(model), "opt": nnx.state(optimizer)}
    return jax.lax.with_sharding_constraint((state, metrics), replicated)

  def variant(step):
    return None if source.variant is None else source.variant(int(step))

  def draw_sharded(inputs, step, variant):
    return jax.lax.with_sharding_constraint(source.draw(inputs, step, variant), batch_sharding)

  train_step_on_batch = jax.jit(sgd_step, donate_argnums=0)
  if source.on_device:
    # A static variant (e.g. the frame size): each distinct one is its own compiled step.
    draw_jitted = jax.jit(draw_sharded, static_argnums=2)

    @functools.partial(jax.jit, static_argnums=3, donate_argnums=0)
    def step_on_device(state, inputs, step, variant):
      return sgd_step(state, draw_jitted(inputs, step, variant))

    # The step as a host scalar: the same value in every process, replicated by jit.
    def draw_batch(step):
      return draw_jitted(source.inputs, np.int32(step), variant(step))

    def train_step(state, step):
      return step_on_device(state, source.inputs, np.int32(step), variant(step))

  else:

    def draw_batch(step):
      return on_mesh(
        sources.Batch(*source.draw(source.inputs, step, variant(step))), batch_sharding
      )

    def train_step(state, step):
      return train_step_on_batch(state, draw_batch(step))

  @jax.jit
  def predict(model_state, images):
    model = nnx.merge(eval_graph, model_state)
    return head.decode(model(images), **decode_settings)

  return Experiment(
    config=config,
    mesh=mesh,
    preset=preset,
    sim_params=sim_params,
    state=state,
    source=source,
    train_step=train_step,
    train_step_on_batch=train_step_on_batch,
    draw_batch=draw_batch,
    predict=predict,
    num_params=num_params,
  )


# --- the workdir ---------------------------------------------------------------------------


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


def _sim_record(experiment: Experiment) -> dict:
  """The training distribution as JSON: the simulation values and the source's record."""
  record = {**experiment.sim_params.to_dict(), **(experiment.source.record or {})}
  return json.loads(json.dumps(record))


def _resume(
  workdir: Path, config, experiment: Experiment, checkpoints, verbose: bool
) -> tuple[dict, dict]:
  """(state, meta) of the workdir's last checkpoint, or the fresh ones (the model's weights
  from ``config.init_from`` if set; see ``warm_start``).

  Raises:
    ValueError: a corrupt checkpoint, or one made with other simulation parameters.
  """
  sim_record = _sim_record(experiment)
  meta = {
    "step": 0,
    "best_score": -1.0,
    "best_step": None,
    "best_eval": None,
    "sim_params": sim_record,
  }
  restored = checkpoint.restore_latest(checkpoints, experiment.state, experiment.replicated)
  if restored is None:
    if config.get("init_from"):
      if verbose:
        print(f"starting from the weights of {config.init_from}", flush=True)
      return warm_start(config, experiment), meta
    return experiment.state, meta
  state, meta = restored
  if meta.get("sim_params", sim_record) != sim_record:
    changed = sorted(k for k in sim_record if meta["sim_params"].get(k) != sim_record[k])
    raise ValueError(
      f"the simulation parameters changed since {workdir} was checkpointed "
      f"({', '.join(changed)}; e.g. a new preset calibration): resuming would mix two "
      "training distributions; use a new workdir"
    )
  if verbose:
    print(f"resuming from {checkpoints.directory} at step {meta['step']}", flush=True)
  return state, meta


def warm_start(config, experiment: Experiment) -> dict:
  """The fresh training state with the model's weights (and batch statistics) taken from
  ``config.init_from``: a shipped model's name (``qdjax.detect.inference.MODELS``), a
  directory written by ``export_pretrained`` or a training workdir (its best checkpoint).
  The optimizer starts afresh (zero momentum, step 0 of the schedule).

  Raises:
    ValueError: the source is another architecture than ``config.model``.
  """
  from qdjax.detect import inference  # the loaders of shipped models and workdirs

  source = config.init_from
  if source in inference.MODELS:
    locator = inference.load(model=source)
  else:
    locator = inference.load(source)
  mine = {"name": config.model.name, **model_settings(config)}
  theirs = {k: v for k, v in locator.model_config.items() if v is not None}
  if mine != theirs:
    raise ValueError(
      f"config.init_from={source!r} is the model {theirs}, not config.model's {mine}"
    )
  model_state = jax.tree.map(lambda x: x, experiment.state["model"])  # a copy
  nnx.replace_by_pure_dict(model_state, locator._state.to_pure_dict())
  return {**experiment.state, "model": on_mesh(model_state, experiment.replicated)}


def _write_run_record(workdir: Path, config, experiment: Experiment) -> None:
  io.write_text(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")
  # The command line that (re)started this run, recorded for the shipped model's provenance.
  record = {
    "command": shlex.join(sys.argv),
    "seed": config.seed,
    "processes": jax.process_count(),
    "devices": experiment.mesh.size,
    "sim_params": _sim_record(experiment),
    "preset": experiment.preset.to_dict(),
  }
  io.write_text(workdir / "run.json", json.dumps(record, indent=2) + "\n")


# --- the loop ------------------------------------------------------------------------------


def train_and_evaluate(config, workdir) -> dict[str, Any]:
  """Trains (resuming from ``workdir`` if it holds a checkpoint) and evaluates.

  Args:
    config: ConfigDict (see experiments/configs/default.py).
    workdir: output directory (created).

  Under ``jax.distributed`` every process calls it with the same arguments (see the module
  docstring); each returns the same result.

  Returns:
    The result dict also written to ``workdir/result.json``.

  Raises:
    ValueError: bad config, or a corrupt checkpoint.
  """
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise ValueError(f"workdir is not a directory: {workdir}")
  workdir.mkdir(parents=True, exist_ok=True)
  # Process 0 writes the workdir's files (Orbax's checkpoints aside) and reports progress.
  primary = jax.process_index() == 0
  experiment = build(config)
  epsilons = experiment.preset.epsilons_px
  schedule = learning_rate_schedule(config)

  checkpoints = checkpoint.manager(workdir / checkpoint.CHECKPOINTS, config.keep_checkpoints)
  best = checkpoint.manager(workdir / checkpoint.BEST, 1)
  state, meta = _resume(workdir, config, experiment, checkpoints, primary and config.progress)
  if primary:
    _write_run_record(workdir, config, experiment)
  start = meta["step"]
  for step in best.all_steps():
    if step > start:  # saved after the checkpoint we resume from: it will be redone
      best.delete(step)
  metrics_path = workdir / "metrics.jsonl"
  records = _read_records(metrics_path, start) if primary else []
  if primary:
    io.write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in records))

  _LOG.info(
    "model %s: %d parameters; %d devices in %d processes; batch %d",
    config.model.name,
    experiment.num_params,
    experiment.mesh.size,
    jax.process_count(),
    config.batch_size,
  )
  sets = validation.validation_sets(
    config, experiment.preset, experiment.sim_params, **sim_overrides(config, experiment.preset)
  )

  bar = tqdm(
    total=config.num_steps,
    initial=start,
    unit="step",
    disable=not (primary and config.progress),
    desc="train",
  )
  tick, tick_step = time.perf_counter(), start
  # Each step's metrics stay on the device (no host sync per step) until the next log
  # step, which records their mean over the interval.
  interval = []
  # Leaving the block closes the checkpoint managers, which waits for a save in flight,
  # also on an error or Ctrl-C: the last checkpoint is complete and no Orbax thread is
  # left writing while the interpreter exits.
  log = metrics_path.open("a") if primary else contextlib.nullcontext()
  with log, checkpoints, best:
    for step in range(start + 1, config.num_steps + 1):
      state, step_metrics = experiment.train_step(state, step)
      bar.update(1)
      interval.append(step_metrics)
      record = {}
      last = step == config.num_steps
      if step % config.log_every == 0 or last:
        host = jax.device_get(interval)  # one transfer for the whole interval
        values = {k: float(np.mean([m[k] for m in host], dtype=np.float64)) for k in host[0]}
        interval = []
        now = time.perf_counter()
        rate = (step - tick_step) * config.batch_size / max(now - tick, 1e-9)
        tick, tick_step = now, step
        record.update(values)
        record["frames_per_s"] = rate
        record["learning_rate"] = float(schedule(step - 1))
        bar.set_postfix(loss=f"{values['loss']:.3f}", frames_s=f"{rate:.0f}")
      if step % config.eval_every == 0 or last:
        result = same_on_all_processes(
          validation.validate(functools.partial(experiment.locate, state["model"]), sets, epsilons)
        )
        record["val_auc"] = result["auc"]
        record["val_auc_by_split"] = result["auc_by_split"]
        record["val_score"] = result["score"]
        if result["score"] > meta["best_score"]:
          meta.update(best_score=result["score"], best_step=step, best_eval=result)
          checkpoint.save_best(best, step, state["model"], result)
        if primary:
          bar.write(
            f"step {step}: validation AUC "
            + " ".join(f"eps{k}={v:.3f}" for k, v in result["auc"].items())
            + f" (score {result['score']:.3f})"
          )
        # Validation time is not training time: restart the frames/s clock.
        tick, tick_step = time.perf_counter(), step
      if record and primary:
        record = {"step": step, "frames_seen": step * config.batch_size, **record}
        log.write(json.dumps(record) + "\n")
        log.flush()
        records.append(record)
      if step % config.checkpoint_every == 0 or last:
        meta["step"] = step
        checkpoint.save_state(checkpoints, step, state, meta)
  bar.close()

  best_eval = meta["best_eval"]
  result = {
    "auc": best_eval["auc"],
    "auc_by_split": best_eval["auc_by_split"],
    "frames_seen": config.num_steps * config.batch_size,
    "best_step": meta["best_step"],
    "selection": "mean validation AUC over splits "
    f"({', '.join(sets)}) and epsilons {', '.join(validation.eps_key(e) for e in epsilons)} px",
    "validation_frames_per_split": config.validation_size,
    "num_params": experiment.num_params,
  }
  if primary:
    io.write_text(workdir / "result.json", json.dumps(result, indent=2) + "\n")
    from qdjax import plotting  # pyplot is loaded only when a run ends

    plotting.training_curves(records, workdir / "curves.png")
  return result
