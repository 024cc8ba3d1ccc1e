"""A trained detector, ready to use: no training code and no network needed.

    locator = inference.load()              # the default shipped model (see default_model)
    locator = inference.load(model="paper") # a shipped model by name
    locator = inference.load("workdirs/x")  # the best checkpoint of a training run
    per_frame = locator(images)             # images [n, h, w] (any h, w): list of [k, 3]

Each element of ``per_frame`` holds one frame's detections as rows (x, y, score) in the
coordinates of docs/spec.md, section 1 (the centre of pixel (row 0, column 0) is (0, 0);
x = column), sorted by descending score. The model is fully convolutional, so frames of
any size are run as they are (no padding or resizing by the caller); one call takes frames
of one size.

Shipped models live in ``qdjax/pretrained/<name>/``: ``weights.npz`` (the model's
``nnx.State`` as flat arrays named by their path, readable by NumPy alone) and
``config.json`` (model and decoding settings, the preset it was trained on, and the
command and seed that trained it). ``export_pretrained`` writes such a directory from a
training workdir. The shipped names (``MODELS``, the preferred default first):

- ``general_fast``: the ``s4_light`` network over the same prior as ``general``, started
  from ``paper_fast``'s weights; the default wherever its weights are shipped. On the
  ``invivo`` test sets at least as accurate as ``general`` in every cell, at many times its
  speed (docs/results.md).
- ``general``: the ``base`` network trained over ``qdjax.sim.prior`` (many photon levels,
  Poisson and PMT frames, 0 to several QDs, several frame sizes).
- ``paper_fast``: the ``s4_light`` network (``qdjax.detect.model``) trained on the ``paper``
  preset only, 1M frames. On the study's test sets its mean AUC is within 0.001 of
  ``paper``'s, at many times its speed (``experiments/bench.py --what=locate``).
- ``paper``: the ``base`` network trained on the ``paper`` preset only, 300k frames: the
  full-accuracy reference of the study's table.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qdjax import chunks, io
from qdjax.detect import cascade as cascade_lib
from qdjax.detect import head
from qdjax.detect import model as model_lib
from qdjax.detect.shipped import MODELS

PRETRAINED_ROOT = Path(__file__).parents[1] / "pretrained"
PRETRAINED_DIR = PRETRAINED_ROOT / "paper"
WEIGHTS = "weights.npz"
CONFIG = "config.json"
# Pixels per jitted call at most: a memory bound on an accelerator, where large calls fill
# the device. On a CPU small calls run faster (cache-sized work; docs/results.md, "Speed").
CHUNK_PIXELS = 1 << 22
CPU_CHUNK_PIXELS = 1 << 16
DECODE_SETTINGS = (
  "area_per_detection",
  "min_detections",
  "nms_window",
  "score_window",
  "score_radius",
  "refine_window",
)


def _flatten(tree, prefix=()) -> dict[str, np.ndarray]:
  out = {}
  for key, value in tree.items():
    path = prefix + (str(key),)
    if isinstance(value, dict):
      out.update(_flatten(value, path))
    else:
      out["/".join(path)] = np.asarray(value)
  return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = [int(p) if p.isdigit() else p for p in name.split("/")]
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _abstract_model(model_config: dict):
  """(graphdef in eval mode, abstract nnx.State) of the model, without initialising it."""
  settings = {k: v for k, v in model_config.items() if k != "name" and v is not None}
  abstract = nnx.eval_shape(
    lambda: model_lib.create(model_config["name"], rngs=nnx.Rngs(0), **settings)
  )
  abstract.eval()
  return nnx.split(abstract)


def _read_json(path: Path) -> dict:
  if not path.is_file():
    raise FileNotFoundError(f"missing {path}")
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e})") from None


class Locator:
  """Callable detector: frames in, per-frame (x, y, score) arrays out.

  Args:
    model_config: ``{"name": preset, **KeypointNet overrides}``.
    decode: ``head.decode`` settings (area_per_detection, min_detections, nms_window,
      score_window, score_radius, refine_window). ``max_detections``, the fixed count of
      older configs, is read as ``min_detections``: every model's detections scale with
      the frame's area.
    weights: the model state as a pure dict (nested, as ``nnx.State.to_pure_dict``).
    min_score: detections scored below this are dropped.
    chunk: at most this many frames per jitted call, and at most ``CHUNK_PIXELS`` pixels
      (a memory bound: 16 whole 512 x 512 fields, or 1024 crops of 24 x 25), or on a CPU
      ``CPU_CHUNK_PIXELS`` (one field, or 109 crops).
    info: provenance (config, preset, validation), kept as ``locator.info``.
    cascade: None (the whole network on every pixel), or ``cascade.Settings``: frames
      large enough run the network only on windows around candidate tiles
      (``qdjax.detect.cascade``).
  """

  method = "model"  # its name in ``qdjax.localize.locator`` (default score cut there)

  def __init__(
    self, model_config, decode, weights, min_score=0.0, chunk=1024, info=None, cascade=None
  ):
    decode = _current_decode_settings(decode)
    unknown = sorted(set(decode) - set(DECODE_SETTINGS))
    if unknown:
      raise ValueError(f"unknown decode setting(s): {', '.join(unknown)}")
    graphdef, abstract_state = _abstract_model(model_config)
    expected = jax.tree.map(lambda x: tuple(x.shape), abstract_state.to_pure_dict())
    try:
      got = jax.tree.map(lambda x: tuple(np.shape(x)), weights)
      matches = got == expected
      nnx.replace_by_pure_dict(abstract_state, weights)
    except (KeyError, ValueError, TypeError) as e:
      raise ValueError(f"weights do not match the model {model_config['name']!r}: {e}") from None
    if not matches:
      raise ValueError(f"weights do not match the model {model_config['name']!r} (shapes differ)")
    state = jax.tree.map(jnp.asarray, abstract_state)
    self._state = state
    self.decode_settings = {k: v for k, v in decode.items() if k in DECODE_SETTINGS}
    self.min_score = float(min_score)
    if chunk < 1:
      raise ValueError(f"chunk must be >= 1, got {chunk}")
    self.chunk = int(chunk)
    self.info = dict(info or {})
    self.model_config = dict(model_config)
    self.cascade = cascade

    @jax.jit
    def run(state, images, min_score):
      net = nnx.merge(graphdef, state)
      if cascade is not None:
        return cascade_lib.decode(net, images, cascade, self.decode_settings, min_score)
      return head.decode(net(images), **self.decode_settings, min_score=min_score)

    self._run = run

  def detect(self, images, min_score: float | None = None, progress=None) -> dict[str, np.ndarray]:
    """Fixed-size detections of [n, h, w] frames: dict of [n, k] NumPy arrays
    ``x``, ``y``, ``score``, ``valid`` (see ``head.decode``). Frames run in chunks of at
    most ``chunk``, short stacks padded to a power of two so that calls of many lengths
    share a few compilations; ``progress`` (a tqdm-like bar) advances by frames. A flat frame
    (all pixels equal) has no valid detections."""
    images = np.asarray(images, np.float32)
    if images.ndim == 2:
      images = images[None]
    if images.ndim != 3:
      raise ValueError(f"expected frames of shape (n, h, w) or (h, w), got {images.shape}")
    if 0 in images.shape[1:]:
      raise ValueError(f"zero-size frames: {images.shape}")
    if not np.isfinite(images).all():
      raise ValueError("frames contain NaN or infinite pixels")
    threshold = jnp.float32(self.min_score if min_score is None else min_score)

    def run(block):
      return self._run(self._state, block, threshold)

    # Chunks hold at most that many pixels, and short stacks are padded to 8 frames only
    # where 8 frames are cheap: a single whole field is never run 8 times.
    h, w = images.shape[1:]
    pixels = CPU_CHUNK_PIXELS if jax.default_backend() == "cpu" else CHUNK_PIXELS
    chunk = max(1, min(self.chunk, pixels // (h * w)))
    minimum = max(1, min(8, (1 << 16) // (h * w)))
    out = chunks.map_chunks(run, images, chunk, progress=progress, minimum=minimum)
    # A frame without contrast (every pixel equal; any 1 x 1 frame) says nothing about where
    # a QD is: whatever the network scores there comes from its zero padding, not the data.
    flat = images.min(axis=(1, 2)) == images.max(axis=(1, 2))
    out["valid"] = out["valid"] & ~flat[:, None]
    return out

  def __call__(self, images, progress=None, *, min_score: float | None = None) -> list[np.ndarray]:
    """[n, h, w] (or [h, w]) frames -> list of n float32 arrays [k_i, 3] (x, y, score); a
    ``qdjax.localize.locator.Locator``."""
    return head.to_lists(self.detect(images, min_score, progress))


def _current_decode_settings(decode: dict) -> dict:
  """Decode settings with an older config's fixed ``max_detections`` read as the floor
  ``min_detections`` (detections then scale with the frame's area)."""
  decode = dict(decode)
  if "max_detections" in decode:
    legacy = decode.pop("max_detections")
    decode.setdefault("min_detections", legacy)
  return decode


def _model_config(config: dict) -> dict:
  return dict(config["model"])


def pretrained_dir(model: str) -> Path:
  """The directory of the shipped model called ``model`` (one of ``MODELS``).

  Raises:
    ValueError: an unknown name.
  """
  if model not in MODELS:
    raise ValueError(f"unknown model {model!r}; shipped models: {', '.join(MODELS)}")
  return PRETRAINED_ROOT / model


def shipped_models() -> tuple[str, ...]:
  """The names of ``MODELS`` whose weights are shipped, in ``MODELS``' order."""
  return tuple(name for name in MODELS if (PRETRAINED_ROOT / name / WEIGHTS).is_file())


def default_model() -> str:
  """The first of ``MODELS`` whose weights are shipped (``general_fast`` where shipped)."""
  return (shipped_models() or MODELS[-1:])[0]


def load(
  workdir=None,
  *,
  model: str | None = None,
  min_score: float = 0.0,
  chunk: int = 1024,
  cascade: bool | cascade_lib.Settings = False,
  **decode,
) -> Locator:
  """A ``Locator`` for a shipped model (``workdir=None``: ``model``, default
  ``default_model()``), a directory written by ``export_pretrained``, or a training
  workdir (its best validation checkpoint).

  ``decode`` overrides the stored decoding settings (``area_per_detection``,
  ``min_detections``, ``nms_window``, ``score_window``, ``score_radius``,
  ``refine_window``; see ``head.decode``). ``cascade``: True (``cascade.Settings()``) or
  settings to run large frames through ``qdjax.detect.cascade``.

  Raises:
    FileNotFoundError: no such directory or checkpoint, or no shipped weights yet.
    ValueError: corrupt or mismatched weights.
  """
  if workdir is not None and model is not None:
    raise ValueError("give a workdir or a shipped model name, not both")
  if cascade is True:
    cascade = cascade_lib.Settings()
  cascade = cascade or None
  if workdir is None:
    directory = pretrained_dir(default_model() if model is None else model)
  else:
    directory = Path(workdir)
  if (directory / WEIGHTS).is_file():
    info = _read_json(directory / CONFIG)
    try:
      with np.load(directory / WEIGHTS, allow_pickle=False) as f:
        weights = _unflatten({name: f[name] for name in f.files})
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # damaged
      raise ValueError(f"cannot read {directory / WEIGHTS} ({type(e).__name__}: {e})") from None
    settings = {**_current_decode_settings(info["decode"]), **_current_decode_settings(decode)}
    return Locator(info["model"], settings, weights, min_score, chunk, info, cascade)
  if workdir is None:
    raise FileNotFoundError(
      f"no pretrained weights shipped yet ({directory / WEIGHTS} is missing): train with "
      "experiments/train.py and pass its workdir, or write them with "
      "qdjax.detect.inference.export_pretrained"
    )
  if not directory.is_dir():
    raise FileNotFoundError(f"no such workdir: {directory}")
  from qdjax.detect import checkpoint  # Orbax: imported only for training workdirs (start-up time)

  config = _read_json(directory / "config.json")
  _, abstract_state = _abstract_model(_model_config(config))
  weights, record = checkpoint.restore_best(directory, abstract_state)
  info = {"workdir": str(directory), "config": config, "validation": record}
  settings = {**_current_decode_settings(config["decode"]), **_current_decode_settings(decode)}
  return Locator(_model_config(config), settings, weights, min_score, chunk, info, cascade)


def export_pretrained(workdir, out_dir=PRETRAINED_DIR, *, command: str | None = None) -> Path:
  """Writes ``weights.npz`` and ``config.json`` for shipping from a workdir's best checkpoint.

  Args:
    workdir: a finished training run.
    out_dir: destination directory (created).
    command: the training command to record (default: ``workdir/run.json``'s last one).

  Returns:
    ``out_dir`` as a Path.
  """
  from qdjax.detect import checkpoint  # only the export restores and records these
  from qdjax.sim import presets

  workdir, out_dir = Path(workdir), Path(out_dir)
  config = _read_json(workdir / "config.json")
  model_config = _model_config(config)
  _, abstract_state = _abstract_model(model_config)
  weights, record = checkpoint.restore_best(workdir, abstract_state)
  if command is None and (workdir / "run.json").is_file():
    command = _read_json(workdir / "run.json").get("command")
  result = _read_json(workdir / "result.json") if (workdir / "result.json").is_file() else None
  info: dict[str, Any] = {
    "model": model_config,
    "decode": dict(config["decode"]),
    "preset": presets.get(config["preset"]).to_dict(),
    "diffusion": config.get("diffusion"),
    "seed": config["seed"],
    "training_command": command,
    "training_config": config,
    "best_step": record.get("step"),
    "validation": {k: record[k] for k in ("auc", "auc_by_split", "score") if k in record},
    "result": result,
  }
  out_dir.mkdir(parents=True, exist_ok=True)
  with io.atomic_path(out_dir / WEIGHTS) as tmp:
    with open(tmp, "wb") as f:
      np.savez_compressed(f, **_flatten(jax.device_get(weights)))
  io.write_text(out_dir / CONFIG, json.dumps(info, indent=2) + "\n")
  return out_dir
