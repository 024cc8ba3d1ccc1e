"""The keypoint detector network: an NNX ResNet backbone with a dense, CenterNet-style head.

    net = model.create("s4_light", rngs=nnx.Rngs(0))
    outputs = net(images)             # images: [n, h, w] raw photon counts, any h, w
    found = head.decode(outputs, min_score=0.1)  # threshold, under a per-area cap
    per_frame = head.to_lists(found)  # list of [k, 3] (x, y, score), docs/spec.md coordinates

Design (the measurements behind each choice are in docs/results.md, with their commands):

- **Input normalisation** inside the model: each frame is centred (on its median, or on
  its mean for the ``normalization='mean'`` presets) and divided by its mean absolute
  deviation from that centre. Either is invariant to a detector offset and gain (tested),
  so a user's frames in ADU, photons or PMT volts go in as they are; no photon level has
  to be known. The mean is far cheaper than the median on whole fields.
- **Backbone**: residual stages (BasicBlocks, BatchNorm, zero-init last scale); later
  stages are strided so the receptive field covers the whole blurred streak. The frame is
  zero-padded (zero is the background after normalisation) to a multiple of the total
  stride and cropped back, so every frame size, odd or even, sees the same alignment of
  coarse and fine features. Stage outputs are projected (1x1), upsampled (nearest) and
  summed, as in a light FPN.
- **Stem**: ``stem_stride=1`` convolves every pixel (``small``, ``base``).
  ``stem_stride=b`` (space-to-depth) folds each b x b block of pixels into one cell of b*b
  channels, runs the network on cells and predicts every pixel's outputs per cell
  (depth-to-space), so the head still speaks per pixel while the work falls ~b*b-fold.
  ``s4_light`` is ``create``'s default: at an equal training budget it is within a few
  thousandths of ``base``'s mean AUC and many times faster; the shipped ``paper`` and
  ``general`` models are ``base``, ``paper_fast`` is ``s4_light``
  (``qdjax/pretrained/*/config.json``).
- **Head**: per pixel, a presence logit, a sub-pixel offset (dx, dy) to the keypoint and
  the log of the offset's predicted rms error sigma; what they are trained to mean and how
  they become detections is ``qdjax.detect.head``.
- Fully convolutional: any frame size works, from 8 x 12 crops to whole fields.
"""

from __future__ import annotations

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def normalize(images, method: str = "median"):
  """Per-frame standardisation, invariant to a detector's offset and gain.

  ``median``: (image - median) / mean |image - median| (robust; a sort per frame).
  ``mean``: (image - mean) / mean |image - mean| (two passes over the frame, no sort: on a
  512 x 512 field the median's sort costs about as much as a light network).

  Args:
    images: [n, h, w] raw intensities in any unit, with any offset.
    method: 'median' or 'mean'.

  Returns:
    [n, h, w] float32, invariant to ``a * images + b`` for any a > 0 and b.
  """
  images = images.astype(jnp.float32)
  if method == "median":
    centre = jnp.median(images, axis=(1, 2), keepdims=True)
  elif method == "mean":
    centre = jnp.mean(images, axis=(1, 2), keepdims=True)
  else:
    raise ValueError(f"normalization must be 'median' or 'mean', got {method!r}")
  centred = images - centre
  scale = jnp.mean(jnp.abs(centred), axis=(1, 2), keepdims=True)
  # A flat frame has scale 0 and no information: map it to zeros, not NaN.
  return centred / jnp.where(scale > 0, scale, 1.0)


def space_to_depth(x, block: int):
  """[n, h, w, c] -> [n, h/b, w/b, b*b*c] (h, w multiples of b): each b x b block of
  pixels becomes one cell's channels, losslessly."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // block, block, w // block, block, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h // block, w // block, block * block * c)


def depth_to_space(x, block: int):
  """The inverse of ``space_to_depth``: [n, h, w, b*b*c] -> [n, h*b, w*b, c]."""
  n, h, w, bbc = x.shape
  c = bbc // (block * block)
  x = x.reshape(n, h, w, block, block, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h * block, w * block, c)


def _norm(kind: str, features: int, rngs: nnx.Rngs, zero_init: bool = False):
  if kind == "batch":
    # momentum 0.9 (as Flax's ImageNet example): running statistics settle within the
    # few thousand steps of a CPU run.
    scale_init = nnx.initializers.zeros if zero_init else nnx.initializers.ones
    return nnx.BatchNorm(features, momentum=0.9, scale_init=scale_init, rngs=rngs)
  if kind == "none":
    return lambda x: x
  raise ValueError(f"norm must be 'batch' or 'none', got {kind!r}")


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions with a residual connection (He et al. 2016)."""

  def __init__(self, in_features: int, features: int, strides: int, norm: str, *, rngs):
    use_bias = norm == "none"
    self.conv1 = nnx.Conv(in_features, features, (3, 3), strides, use_bias=use_bias, rngs=rngs)
    self.norm1 = _norm(norm, features, rngs)
    # The residual branch starts at zero (zero BatchNorm scale, or a zero kernel without
    # normalisation), so a deep net starts as a shallow one and trains stably with SGD.
    kernel_init = nnx.initializers.zeros if norm == "none" else nnx.initializers.lecun_normal()
    self.conv2 = nnx.Conv(
      features, features, (3, 3), use_bias=use_bias, kernel_init=kernel_init, rngs=rngs
    )
    self.norm2 = _norm(norm, features, rngs, zero_init=True)
    if strides != 1 or in_features != features:
      self.project = nnx.Conv(in_features, features, (1, 1), strides, use_bias=use_bias, rngs=rngs)
      self.project_norm = _norm(norm, features, rngs)
    else:
      self.project = None
      self.project_norm = None

  def __call__(self, x):
    residual = x
    y = jax.nn.relu(self.norm1(self.conv1(x)))
    y = self.norm2(self.conv2(y))
    if self.project is not None:
      residual = self.project_norm(self.project(x))
    return jax.nn.relu(residual + y)


class ResNet(nnx.Module):
  """Residual backbone; returns every stage's feature map.

  Args:
    stage_sizes: BasicBlocks per stage.
    stage_features: channels per stage.
    stage_strides: stride of each stage's first block (1 or 2).
    stem_features: channels of the stem convolution.
    stem_kernel: stem kernel size (odd).
    norm: 'batch' or 'none'.
    in_features: input channels (the space-to-depth block's pixels).
  """

  def __init__(
    self,
    stage_sizes,
    stage_features,
    stage_strides,
    stem_features: int,
    stem_kernel: int,
    norm: str,
    in_features: int = 1,
    *,
    rngs: nnx.Rngs,
  ):
    if not len(stage_sizes) == len(stage_features) == len(stage_strides):
      raise ValueError("stage_sizes, stage_features and stage_strides must have equal lengths")
    if any(s not in (1, 2) for s in stage_strides):
      raise ValueError(f"stage_strides must be 1 or 2, got {tuple(stage_strides)}")
    self.stem = nnx.Conv(
      in_features, stem_features, (stem_kernel, stem_kernel), use_bias=norm == "none", rngs=rngs
    )
    self.stem_norm = _norm(norm, stem_features, rngs)
    blocks = []
    in_features = stem_features
    for size, features, strides in zip(stage_sizes, stage_features, stage_strides, strict=True):
      stage = []
      for i in range(size):
        stage.append(BasicBlock(in_features, features, strides if i == 0 else 1, norm, rngs=rngs))
        in_features = features
      blocks.append(nnx.List(stage))
    self.stages = nnx.List(blocks)

  def __call__(self, x):
    """x: [n, h, w, in_features] -> list of [n, h/s_i, w/s_i, c_i]."""
    x = jax.nn.relu(self.stem_norm(self.stem(x)))
    outputs = []
    for stage in self.stages:
      for block in stage:
        x = block(x)
      outputs.append(x)
    return outputs


class KeypointNet(nnx.Module):
  """ResNet backbone + dense keypoint head. See the module docstring.

  Args:
    stage_sizes, stage_features, stage_strides, stem_features, stem_kernel, norm: the
      backbone (``ResNet``).
    head_features: channels of the FPN sum and the head's hidden layer.
    prior: initial presence probability per pixel (sets the logit bias, as in RetinaNet),
      so the first steps do not spend themselves pushing every pixel to "absent".
    stem_stride: space-to-depth block b. With b > 1 each b x b block of pixels enters as
      one cell of b*b channels, the whole network runs on cells (b*b fewer positions), and
      the head predicts the outputs of all b*b pixels of a cell (depth-to-space), so the
      outputs stay per pixel, at full resolution.
    normalization: 'median' or 'mean' (see ``normalize``).
  """

  def __init__(
    self,
    *,
    stage_sizes=(2, 2),
    stage_features=(32, 64),
    stage_strides=(1, 2),
    stem_features: int = 32,
    stem_kernel: int = 5,
    head_features: int = 32,
    norm: str = "batch",
    prior: float = 1e-3,
    stem_stride: int = 1,
    normalization: str = "median",
    rngs: nnx.Rngs,
  ):
    if stem_stride < 1:
      raise ValueError(f"stem_stride must be >= 1, got {stem_stride}")
    if normalization not in ("median", "mean"):
      raise ValueError(f"normalization must be 'median' or 'mean', got {normalization!r}")
    self.stem_stride = stem_stride
    self.normalization = normalization
    cell = stem_stride * stem_stride
    self.backbone = ResNet(
      stage_sizes,
      stage_features,
      stage_strides,
      stem_features,
      stem_kernel,
      norm,
      in_features=cell,
      rngs=rngs,
    )
    self.strides = tuple(int(np.prod(stage_strides[: i + 1])) for i in range(len(stage_strides)))
    self.laterals = nnx.List(
      [nnx.Conv(c, head_features, (1, 1), rngs=rngs) for c in stage_features]
    )
    self.hidden = nnx.Conv(head_features, head_features, (3, 3), rngs=rngs)
    bias = math.log(prior / (1 - prior))
    # Channels: presence logit, dx, dy, log sigma (offset uncertainty, px).
    # (With stem_stride b: these four per pixel of the cell, b*b pixels.)
    self.out = nnx.Conv(
      head_features,
      4 * cell,
      (1, 1),
      kernel_init=nnx.initializers.normal(1e-3),
      bias_init=lambda *_: jnp.tile(jnp.array([bias, 0.0, 0.0, 0.0], jnp.float32), cell),
      rngs=rngs,
    )

  def __call__(self, images):
    """Dense outputs for raw frames.

    Args:
      images: [n, h, w] raw intensities (any h, w >= 1).

    Returns:
      dict with ``logits`` [n, h, w] presence logits, ``offsets`` [n, h, w, 2] the
      (dx, dy) from each pixel centre to its keypoint, px, and ``log_sigma`` [n, h, w] the
      log of the predicted per-axis rms error of those offsets, px.
    """
    return self.forward(normalize(images, self.normalization))

  @property
  def alignment(self) -> int:
    """The network's total stride in px: frames are padded to a multiple of it, and a
    window of a frame gives the frame's outputs only if it starts at a multiple of it."""
    return self.strides[-1] * self.stem_stride

  def forward(self, normalized):
    """Dense outputs of frames already normalised (``normalize``); ``__call__`` is
    ``forward(normalize(images))``. A window of a normalised frame gives the frame's own
    outputs wherever the window holds the receptive field (``qdjax.detect.cascade``).

    Args:
      normalized: [n, h, w] float32.

    Returns:
      as ``__call__``.
    """
    n, h, w = normalized.shape
    x = normalized[..., None]
    block = self.stem_stride
    stride = self.alignment
    ph, pw = -h % stride, -w % stride
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    if block > 1:
      x = space_to_depth(x, block)
    features = self.backbone(x)
    y = 0.0
    for f, lateral, s in zip(features, self.laterals, self.strides, strict=True):
      f = lateral(f)
      if s > 1:
        f = jnp.repeat(jnp.repeat(f, s, axis=1), s, axis=2)
      y = y + f
    y = jax.nn.relu(self.hidden(jax.nn.relu(y)))
    y = self.out(y)
    if block > 1:
      y = depth_to_space(y, block)
    y = y[:, :h, :w]
    log_sigma = jnp.clip(y[..., 3], -4.0, 3.0)
    return {"logits": y[..., 0], "offsets": y[..., 1:3], "log_sigma": log_sigma}


def _preset(sizes, features, strides, width: int, **settings):
  """A ``KeypointNet`` whose stem and head have ``width`` channels."""
  return functools.partial(
    KeypointNet,
    stage_sizes=sizes,
    stage_features=features,
    stage_strides=strides,
    stem_features=width,
    head_features=width,
    **settings,
  )


def _cells(block: int, sizes, features, strides, width: int):
  """A space-to-depth preset: the network runs on ``block`` x ``block`` pixel cells and
  predicts every pixel's outputs per cell, with the mean normalisation (no per-frame sort)."""
  return _preset(
    sizes, features, strides, width, stem_kernel=3, stem_stride=block, normalization="mean"
  )


# Presets. ``tiny`` is for tests; ``s4_light`` is the default (fastest at nearly the same
# accuracy, see the module docstring); ``base`` is the shipped model; the others were
# measured beside them. Columns: stage sizes, stage features, stage strides, stem/head width.
PRESETS = {
  "tiny": _preset((1,), (8,), (1,), 8, stem_kernel=3),
  "fast": _preset((1, 1), (32, 48), (2, 2), 16),
  "small": _preset((1, 2), (24, 48), (1, 2), 24),
  "base": _preset((2, 2, 2), (32, 64, 96), (1, 2, 2), 32),
  "wide": _preset((2, 3, 3), (48, 96, 160), (1, 2, 2), 48),
  "s2": _cells(2, (2, 2, 2), (32, 64, 96), (1, 2, 2), 32),
  "s2_light": _cells(2, (1, 1, 1), (24, 48, 64), (1, 2, 2), 24),
  "s4": _cells(4, (2, 2), (48, 96), (1, 2), 48),
  "s4_light": _cells(4, (1, 1), (32, 64), (1, 2), 32),
}


def create(name: str, *, rngs: nnx.Rngs, **overrides) -> KeypointNet:
  """A preset model, with any ``KeypointNet`` argument overridden.

  Raises:
    ValueError: for an unknown preset or argument.
  """
  if name not in PRESETS:
    raise ValueError(f"unknown model {name!r}; known: {', '.join(PRESETS)}")
  known = set(inspect.signature(KeypointNet.__init__).parameters) - {"self", "rngs"}
  unknown = sorted(set(overrides) - known)
  if unknown:
    raise ValueError(f"unknown model setting(s): {', '.join(unknown)}")
  overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
  return PRESETS[name](rngs=rngs, **overrides)


def count_params(module: nnx.Module) -> int:
  """Number of trainable parameters."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
