"""The keypoint detector: an NNX ResNet backbone with a dense, CenterNet-style head.

    net = model.create("s4_light", rngs=nnx.Rngs(0))
    outputs = net(images)                  # images: [n, h, w] raw photon counts, any h, w
    found = model.decode(outputs, min_score=0.1)  # threshold, under a per-area cap
    per_frame = model.to_lists(found)      # list of [k, 3] (x, y, score), docs/spec.md coordinates

Design, and the measurements behind it ("mean AUC" = mean over the nine cells val_d1..3 x
epsilon 1, 2, 3 px; 64k training frames unless stated):

- **Input normalisation** inside the model: each frame is centred (on its median, or on
  its mean for the ``normalization='mean'`` presets) and divided by its mean absolute
  deviation from that centre. Either is invariant to a detector offset and gain (tested),
  so a user's frames in ADU, photons or PMT volts go in as they are; no photon level has
  to be known. The median sorts every frame: on a 512 x 512 field it cost more than the
  whole ``s4_light`` network (273 ms against 1 ms for the mean, 2-core CPU).
- **Backbone**: residual stages (BasicBlocks, BatchNorm, zero-init last scale); later
  stages are strided so the receptive field covers the whole blurred streak (at D3 the
  trajectory centroid sits ~1 px from the brightest pixels). The frame is zero-padded
  (zero is the background after normalisation) to a multiple of the total stride and
  cropped back, so every frame size, odd or even, sees the same alignment of coarse and
  fine features. Stage outputs are projected (1x1), upsampled (nearest) and summed, as in
  a light FPN.
- **Stem**: ``stem_stride=1`` convolves every pixel (``small``, ``base``: the shipped
  model). ``stem_stride=b`` (space-to-depth) folds each b x b block of pixels into one
  cell of b*b channels, runs the network on cells and predicts every pixel's outputs per
  cell (depth-to-space), so the head still speaks per pixel while the work falls ~b*b-fold.
  Measured at an equal budget (131k frames, the shipped recipe, mean validation AUC over
  the nine cells on 2000 fresh frames per regime; ``experiments/bench.py --what=tradeoff``):
  ``base`` 0.5764, ``s2`` 0.5748, ``s4`` 0.5718, ``s2_light`` 0.5701, ``s4_light`` 0.5700,
  ``fast`` 0.5618 (the shipped ``base``, 300k frames: 0.5800). On the 2-core CPU, side by
  side with single-process trackpy: ``s4_light`` 25x trackpy's frames/s on 24 x 25 crops
  and 2.6x on 512 x 512 fields with 20 QDs; ``s4`` 12x and 1.0x; ``s2_light`` 19x and
  1.3x; the shipped ``base`` ~0.7x and ~0.1x. ``s4_light`` is the default: capacity was
  never what limited accuracy here (``base`` has 5x ``small``'s parameters for +0.003).
- **Head**: per pixel, a presence logit, a sub-pixel offset (dx, dy) to the keypoint and
  the log of the offset's predicted rms error sigma. The presence target is one-hot at the
  pixel nearest each keypoint and the loss a per-pixel binary cross-entropy, so
  sigmoid(logit) estimates P(keypoint in this pixel): a calibrated posterior, which is
  what a precision-recall AUC rewards when it ranks detections. Offsets are regressed (L1)
  at every pixel within ``offset_radius`` of a keypoint, so the offset read at a peak one
  pixel off is still trained. Sigma is fitted by a Gaussian likelihood on the offset's
  error with the offset held fixed, so it cannot pull the offsets.
- **Decoding** (``decode``): peaks are local maxima of the presence probability (NMS).
  A peak's score is the presence mass in its 3x3 window (the probability that the
  keypoint is within about a pixel) times the predicted P(offset error < ``score_radius``).
  The detections are the peaks scoring at least ``min_score``, up to a cap that scales
  with the area (one per ``area_per_detection`` px^2, at least ``min_detections``), in
  fixed-size jittable arrays whose size depends only on the frame size. On 4000 frames
  per regime, paired, the sigma factor added 0.004 mean AUC (higher in all nine cells); a
  5x5 mass window lost 0.008; averaging the offset votes of the 3x3 window
  (``refine_window``) added 0.002. Window maxima and sums are shifted slices, and the
  refinement is gathered at the peaks only: ``lax.reduce_window`` and dense refinement
  cost ~35 ms on a 512 x 512 field, this ~4 ms.
- Fully convolutional: any frame size works, from 8 x 12 crops to whole fields.
"""

from __future__ import annotations

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
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
    n, h, w = images.shape
    x = normalize(images, self.normalization)[..., None]
    block = self.stem_stride
    stride = self.strides[-1] * block
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


def targets(keypoints, present, height: int, width: int, offset_radius: int = 1):
  """Dense training targets for a batch.

  Args:
    keypoints: [n, P, 2] (x, y) px (NaN where absent).
    present: [n, P] bool.
    height, width: frame size.
    offset_radius: offsets are trained within this Chebyshev distance (px) of the pixel
      nearest a keypoint.

  Returns:
    (heat [n, h, w] 1 at the pixel nearest a keypoint else 0,
     offsets [n, h, w, 2] (dx, dy) to the nearest keypoint,
     offset_mask [n, h, w] where offsets are trained).
  """
  x = jnp.where(present, keypoints[..., 0], -1e4)
  y = jnp.where(present, keypoints[..., 1], -1e4)
  cols = jnp.arange(width, dtype=jnp.float32)
  rows = jnp.arange(height, dtype=jnp.float32)
  cx = jnp.clip(jnp.round(x), 0, width - 1)[..., None, None]
  cy = jnp.clip(jnp.round(y), 0, height - 1)[..., None, None]
  here = present[..., None, None]
  # [n, P, h, w]
  dcol = cols[None, None, None, :] - cx
  drow = rows[None, None, :, None] - cy
  centre = here & (dcol == 0) & (drow == 0)
  near = here & (jnp.maximum(jnp.abs(dcol), jnp.abs(drow)) <= offset_radius)
  dx = x[..., None, None] - cols[None, None, None, :]
  dy = y[..., None, None] - rows[None, None, :, None]
  dist = jnp.where(near, dx**2 + dy**2, jnp.inf)
  nearest = jnp.argmin(dist, axis=1)[:, None]
  pick = lambda a: jnp.take_along_axis(jnp.broadcast_to(a, dist.shape), nearest, axis=1)[:, 0]
  offsets = jnp.stack([pick(dx), pick(dy)], axis=-1)
  mask = near.any(axis=1)
  return centre.any(axis=1).astype(jnp.float32), jnp.where(mask[..., None], offsets, 0.0), mask


def loss(
  outputs,
  keypoints,
  present,
  *,
  offset_radius: int = 1,
  offset_weight: float = 1.0,
  uncertainty_weight: float = 1.0,
):
  """Presence BCE + offset L1 + offset-uncertainty NLL.

  - presence: per-pixel binary cross-entropy against the one-hot target, summed over
    pixels, mean over frames;
  - offset: L1 of (dx, dy), mean over the pixels within ``offset_radius`` of a keypoint;
  - uncertainty: the Gaussian negative log-likelihood of the offset's error under the
    predicted isotropic sigma, with the offset held fixed (stop_gradient), so sigma learns
    how wrong the offset is without pulling the offset towards easy frames.

  Returns:
    (total loss [], dict of its parts).
  """
  logits = outputs["logits"]
  n, h, w = logits.shape
  heat, offsets, mask = targets(keypoints, present, h, w, offset_radius)
  count = jnp.maximum(mask.sum(), 1)
  presence = optax.sigmoid_binary_cross_entropy(logits, heat).sum(axis=(1, 2)).mean()
  error = outputs["offsets"] - offsets
  offset = jnp.sum(jnp.where(mask, jnp.abs(error).sum(-1), 0.0)) / count
  squared = jax.lax.stop_gradient(jnp.sum(error**2, axis=-1))
  log_sigma = outputs["log_sigma"]
  nll = squared * jnp.exp(-2 * log_sigma) / 2 + 2 * log_sigma
  uncertainty = jnp.sum(jnp.where(mask, nll, 0.0)) / count
  total = presence + offset_weight * offset + uncertainty_weight * uncertainty
  return total, {"presence": presence, "offset": offset, "uncertainty": uncertainty}


def _window_reduce(x, window: int, op, fill):
  """``op`` over a window x window neighbourhood of each pixel of [n, h, w] (outside the
  frame: ``fill``), as two 1-D passes of shifted slices: on the CPU this is an order of
  magnitude faster than ``lax.reduce_window`` on a whole field."""
  low = (window - 1) // 2  # as lax's "SAME" padding
  for axis in (1, 2):
    pad = [(0, 0)] * 3
    pad[axis] = (low, window - 1 - low)
    padded = jnp.pad(x, pad, constant_values=fill)
    size = x.shape[axis]
    out = jax.lax.slice_in_dim(padded, 0, size, axis=axis)
    for i in range(1, window):
      out = op(out, jax.lax.slice_in_dim(padded, i, i + size, axis=axis))
    x = out
  return x


def _window_sum(x, window: int):
  return _window_reduce(x, window, jnp.add, 0.0)


def _window_max(x, window: int):
  return _window_reduce(x, window, jnp.maximum, -jnp.inf)


def num_slots(height: int, width: int, area_per_detection: float, min_detections: int) -> int:
  """Detection slots of an h x w frame: one per ``area_per_detection`` px^2, at least
  ``min_detections``. A static int (frame sizes are static under jit)."""
  if not area_per_detection > 0:
    raise ValueError(f"area_per_detection must be > 0, got {area_per_detection}")
  return max(int(min_detections), math.ceil(height * width / area_per_detection))


def decode(
  outputs,
  *,
  area_per_detection: float = 256.0,
  min_detections: int = 4,
  nms_window: int = 3,
  score_window: int = 3,
  score_radius: float = 0.0,
  refine_window: int = 1,
  min_score: float = 0.0,
):
  """Detections from dense outputs: a score threshold under a per-area cap; jittable.

  Every local maximum of the presence probability is a candidate. The candidates scoring
  at least ``min_score`` are the detections, up to a cap that grows with the frame: one
  slot per ``area_per_detection`` px^2 (at least ``min_detections``), so a whole field
  yields as many detections as it holds QDs, and a crop a few. Slots are fixed-size
  arrays (their number depends only on the frame size), with ``valid`` marking the used
  ones.

  Args:
    outputs: the model's dict (``logits`` [n, h, w], ``offsets`` [n, h, w, 2], and
      ``log_sigma`` [n, h, w] if ``score_radius`` > 0).
    area_per_detection: the cap: one detection per this many px^2. The default, 256 (one
      per 16 x 16 px), is far above any density single QDs can be resolved at (their
      spots are ~5 px wide), so it never binds on real fields; it only bounds the work.
    min_detections: slots of a frame smaller than ``area_per_detection``.
    nms_window: a pixel is a candidate if its presence probability is the maximum in
      this window.
    score_window: a pixel's score is the presence probability summed over this window.
    score_radius: if > 0, the score is also multiplied by the predicted probability that
      the offset's error is within this radius, 1 - exp(-r^2 / (2 sigma^2)), so precise
      detections rank above vague ones.
    refine_window: if > 1, the position is the presence-weighted mean of the positions
      (pixel + offset) voted by the pixels in this window around the peak.
    min_score: candidates scoring below this are marked invalid (a scalar or a traced
      value).

  Returns:
    dict of [n, k] arrays ``x``, ``y`` (px, docs/spec.md coordinates), ``score`` and ``valid``
    (bool), sorted by score per frame; k = ``num_slots(h, w, ...)``.
  """
  logits, offsets = outputs["logits"], outputs["offsets"]
  n, h, w = logits.shape
  slots = num_slots(h, w, area_per_detection, min_detections)
  prob = jax.nn.sigmoid(logits)
  # Peaks are local maxima of the probability itself (its mode is the best single pixel);
  # their score is the probability mass in the window around them.
  peak_max = _window_max(prob, nms_window)
  score = _window_sum(prob, score_window) if score_window > 1 else prob
  if score_radius > 0:
    sigma2 = jnp.exp(2 * outputs["log_sigma"])
    score = score * -jnp.expm1(-(score_radius**2) / (2 * sigma2))
  flat = jnp.where(prob >= peak_max, score, -jnp.inf).reshape(n, h * w)
  k = min(slots, h * w)
  top, index = jax.lax.top_k(flat, k)
  rows, cols = index // w, index % w
  flat_prob = prob.reshape(n, h * w)
  flat_offsets = offsets.reshape(n, h * w, 2)
  # Positions are refined at the k peaks only (gathers of their windows), not at every
  # pixel of a whole field.
  lo = (refine_window - 1) // 2
  weight = x = y = 0.0
  for dr in range(-lo, refine_window - lo):
    for dc in range(-lo, refine_window - lo):
      r, c = rows + dr, cols + dc
      inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
      at = jnp.clip(r, 0, h - 1) * w + jnp.clip(c, 0, w - 1)
      p = jnp.where(inside, jnp.take_along_axis(flat_prob, at, axis=1), 0.0)
      if refine_window == 1:
        p = jnp.ones_like(p)
      o = jnp.take_along_axis(flat_offsets, at[..., None], axis=1)
      weight = weight + p
      x = x + p * (c + o[..., 0])
      y = y + p * (r + o[..., 1])
  weight = jnp.maximum(weight, 1e-12)
  x, y = x / weight, y / weight
  out = {
    "x": x.astype(jnp.float32),
    "y": y.astype(jnp.float32),
    "score": jnp.where(jnp.isfinite(top), top, 0.0),
    "valid": jnp.isfinite(top) & (top >= min_score),
  }
  if k < slots:  # a frame with fewer pixels than slots: pad with invalid slots
    pad = slots - k
    out = {key: jnp.pad(v, ((0, 0), (0, pad))) for key, v in out.items()}
  return out


def to_lists(decoded) -> list[np.ndarray]:
  """Host side: ``decode`` output -> one [k_i, 3] (x, y, score) float32 array per frame."""
  decoded = jax.device_get(decoded)
  xys = np.stack([decoded["x"], decoded["y"], decoded["score"]], axis=-1).astype(np.float32)
  return [xys[i][decoded["valid"][i]] for i in range(len(xys))]
