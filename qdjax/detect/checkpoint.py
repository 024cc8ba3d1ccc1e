"""Orbax checkpoints of a training workdir, for the trainer and for inference.

  checkpoints/<step>/  ``state`` (model and optimizer ``nnx.State`` as pure dicts) and
                       ``meta`` (JSON: the step, the best validation so far, sim params)
  best/<step>/         ``model`` (the model state as a pure dict) and ``meta`` (JSON: the
                       step and its validation record)

States are stored as pure dicts (``nnx.State.to_pure_dict``), so a checkpoint is plain
arrays that any model of the same shapes can be restored into.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

CHECKPOINTS = "checkpoints"
BEST = "best"

# What Orbax and TensorStore raise on a damaged or mismatched checkpoint directory:
# unreadable files (OSError), bad metadata or array specs (ValueError, which also covers
# JSON and TensorStore decoding errors), a missing or unexpected entry (KeyError), and a
# tree that does not fit the target (TypeError).
RESTORE_ERRORS = (OSError, ValueError, KeyError, TypeError)


def pure(state):
  """A pytree of ``nnx.State`` (e.g. {'model': .., 'opt': ..}) as pure dicts."""
  return jax.tree.map(lambda s: s.to_pure_dict(), state, is_leaf=lambda x: isinstance(x, nnx.State))


def abstract(pure_tree, sharding):
  """ShapeDtypeStructs of ``pure_tree`` on ``sharding``: the restore target."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), pure_tree
  )


def restore_into(state: dict, pure_tree: dict) -> dict:
  """A copy of ``state`` (name -> ``nnx.State``) holding the values of ``pure_tree``."""
  out = {}
  for name, sub in state.items():
    sub = jax.tree.map(lambda x: x, sub)  # a copy: nnx.replace_by_pure_dict mutates
    nnx.replace_by_pure_dict(sub, pure_tree[name])
    out[name] = sub
  return out


def manager(directory: Path, max_to_keep: int | None = None, create: bool = True):
  """An ``ocp.CheckpointManager`` for ``directory`` keeping ``max_to_keep`` steps.

  Raises:
    ValueError: ``directory`` exists and is not a directory.
  """
  directory = Path(directory)
  if directory.exists() and not directory.is_dir():
    raise ValueError(f"checkpoint path is not a directory: {directory}")
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep,
    create=create,
    cleanup_tmp_directories=create,
    # Across processes Orbax names its barriers by step: 'checkpoints' and 'best' both saving
    # one step would meet at the same barrier and time out, unless named apart.
    multiprocessing_options=ocp.options.MultiprocessingOptions(
      barrier_sync_key_prefix=directory.name
    ),
  )
  return ocp.CheckpointManager(directory.absolute(), options=options)


def save_state(checkpoints: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  """Saves the training ``state`` (a pytree of ``nnx.State``) and its JSON ``meta``."""
  checkpoints.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(pure(state)), meta=ocp.args.JsonSave(dict(meta))
    ),
  )


def save_best(best: ocp.CheckpointManager, step: int, model_state, record: dict) -> None:
  """Saves the model state of ``step`` with its validation ``record``."""
  best.save(
    step,
    args=ocp.args.Composite(
      model=ocp.args.StandardSave(pure(model_state)),
      meta=ocp.args.JsonSave({"step": step, **record}),
    ),
  )


def restore(checkpoints: ocp.CheckpointManager, step: int, items: dict[str, Any], hint: str = ""):
  """Restores ``items`` (name -> abstract pytree, or None for JSON) at ``step``.

  Raises:
    ValueError: one line, if the checkpoint is corrupt or does not match the target.
  """
  args = {
    name: ocp.args.JsonRestore() if target is None else ocp.args.StandardRestore(target)
    for name, target in items.items()
  }
  try:
    return checkpoints.restore(step, args=ocp.args.Composite(**args))
  except RESTORE_ERRORS as e:
    detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    raise ValueError(
      f"checkpoint {checkpoints.directory}/{step} is corrupt or does not match "
      f"{hint or 'this model'} ({type(e).__name__}: {detail})"
    ) from None


def restore_latest(checkpoints: ocp.CheckpointManager, state: dict, sharding):
  """The latest training checkpoint, or None if there is none.

  Args:
    checkpoints: the manager of a workdir's ``checkpoints/``.
    state: a state of the same structure (name -> ``nnx.State``), the restore target.
    sharding: where the restored arrays go.

  Returns:
    (state, meta): the restored state on ``sharding`` and the JSON meta saved with it.

  Raises:
    ValueError: a corrupt checkpoint, or one of another model.
  """
  step = checkpoints.latest_step()
  if step is None:
    return None
  target = abstract(pure(state), sharding)
  restored = restore(checkpoints, step, {"state": target, "meta": None})
  return jax.device_put(restore_into(state, restored["state"]), sharding), restored["meta"]


def restore_best(workdir, abstract_state: nnx.State) -> tuple[dict, dict]:
  """The model state (pure dict, on the first local device) and validation record of a
  workdir's best checkpoint.

  Args:
    workdir: a training workdir.
    abstract_state: the model's (abstract) ``nnx.State``, for shapes and dtypes.

  Raises:
    FileNotFoundError: no best checkpoint.
    ValueError: a corrupt checkpoint, or one of another model.
  """
  directory = (Path(workdir) / BEST).absolute()
  if not directory.is_dir():
    raise FileNotFoundError(f"no best checkpoint in {workdir} (expected {directory})")
  best = manager(directory, create=False)
  try:
    step = best.latest_step()
    if step is None:
      raise FileNotFoundError(f"no best checkpoint in {directory}")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = abstract(abstract_state.to_pure_dict(), device)
    restored = restore(best, step, {"model": target, "meta": None}, "its config.json")
  finally:
    best.close()
  return restored["model"], restored["meta"]
