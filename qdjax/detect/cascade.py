"""Whole fields in two stages: a cheap candidate map, then the network around candidates only.

    locator = inference.load(cascade=True)       # or cascade=cascade.Settings(tile=64)
    per_frame = locator(fields)                  # same output as without the cascade

The network is fully convolutional, so its output at a pixel depends only on the pixels
within its receptive field (``receptive_radius``). A window of the normalised frame that
starts at a multiple of the network's stride (``KeypointNet.alignment``) and reaches at
least that radius beyond a tile gives the frame's own outputs on that tile. The cascade:

1. normalises the whole frame once, as the network does, and smooths it with a Gaussian
   (a matched filter for a spot); a tile's candidate value is the smoothed map's maximum
   over the tile and a ``dilate`` px border, in standard deviations of the smoothed map
   above its mean;
2. runs the network on the ``max_tiles`` windows of the highest-valued tiles (a fixed
   number: one compiled program per frame size), and pastes each window's tile into a
   frame-sized map of outputs (pixels of other tiles: presence probability 0);
3. decodes that map as the whole frame's (``head.decode``) and keeps the detections in
   computed tiles. Tiles do not overlap, so no detection is found twice.

When more tiles than ``max_tiles`` pass ``threshold``, the frame runs through the whole
network instead (``lax.cond``: only one branch runs), so a crowded frame loses nothing to
the cap. The cascade pays only where few tiles hold candidates: each window costs
(tile + 2 * margin)^2 pixels of network, and the margin is about 32 px for the shipped
networks; the measured break-even is in docs/results.md.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from qdjax.detect import head
from qdjax.detect import model as model_lib


@dataclasses.dataclass(frozen=True)
class Settings:
  """How the cascade picks windows.

  Attributes:
    tile: tile side, px (rounded up to the network's alignment).
    max_tiles: windows per frame; more candidate tiles than this run the whole network.
      None: one eighth of the frame's tiles.
    threshold: a tile is a candidate when its smoothed maximum is this many standard
      deviations of the smoothed frame above its mean (permissive: noise passes too).
    sigma: the Gaussian's standard deviation, px (about a QD spot's).
    dilate: px beyond a tile that count towards its candidate value, so a QD on a tile's
      edge selects the tiles on both sides.
  """

  tile: int = 32
  max_tiles: int | None = None
  threshold: float = 3.5
  sigma: float = 1.5
  dilate: int = 4


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def receptive_radius(net: model_lib.KeypointNet) -> int:
  """An upper bound, px, on how far from a pixel the inputs reach that change its output:
  the stem, every 3x3 convolution at its stage's stride, the nearest upsampling of the
  coarsest stage, the head's 3x3 convolution, and the space-to-depth cell."""
  backbone = net.backbone
  cells = (backbone.stem.kernel_size[0] - 1) // 2
  jump = 1
  for stage in backbone.stages:
    for block in stage:
      cells += (block.conv1.kernel_size[0] - 1) // 2 * jump
      jump *= (
        block.conv1.strides if isinstance(block.conv1.strides, int) else block.conv1.strides[0]
      )
      cells += (block.conv2.kernel_size[0] - 1) // 2 * jump
  cells += jump - 1  # a pixel reads its coarse cell, up to jump - 1 cells away
  cells += (net.hidden.kernel_size[0] - 1) // 2
  block = net.stem_stride
  return block * cells + block - 1


def smooth(images, sigma: float):
  """[n, h, w] -> [n, h, w]: a Gaussian blur (separable, zero outside the frame)."""
  radius = max(1, math.ceil(3 * sigma))
  taps = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1) / sigma) ** 2)
  taps = taps / taps.sum()
  for axis in (1, 2):
    pad = [(0, 0)] * 3
    pad[axis] = (radius, radius)
    padded = jnp.pad(images, pad)
    size = images.shape[axis]
    images = sum(
      taps[i] * jax.lax.slice_in_dim(padded, i, i + size, axis=axis) for i in range(2 * radius + 1)
    )
  return images


def geometry(net: model_lib.KeypointNet, height: int, width: int, settings: Settings) -> dict:
  """The static layout for h x w frames: tile, margin, window, tile grid, max_tiles; or
  None where a window would not fit in the frame (the whole network runs)."""
  align = net.alignment
  tile = _round_up(settings.tile, align)
  margin = _round_up(receptive_radius(net), align)
  window = tile + 2 * margin
  padded = (_round_up(height, align), _round_up(width, align))
  if min(padded) < window:
    return None
  grid = (-(-height // tile), -(-width // tile))
  tiles = grid[0] * grid[1]
  max_tiles = settings.max_tiles or max(1, tiles // 8)
  if max_tiles >= tiles:
    return None
  return {
    "tile": tile,
    "margin": margin,
    "window": window,
    "padded": padded,
    "grid": grid,
    "max_tiles": max_tiles,
  }


def tile_values(normalized, layout: dict, settings: Settings):
  """[h, w] normalised frame -> [rows, cols] candidate value per tile (standard deviations
  of the smoothed frame above its mean)."""
  h, w = normalized.shape
  smoothed = smooth(normalized[None], settings.sigma)
  z = (smoothed - smoothed.mean()) / jnp.maximum(smoothed.std(), 1e-12)
  if settings.dilate > 0:
    z = head._window_max(z, 2 * settings.dilate + 1)
  rows, cols = layout["grid"]
  tile = layout["tile"]
  z = jnp.pad(z[0], ((0, rows * tile - h), (0, cols * tile - w)), constant_values=-jnp.inf)
  return z.reshape(rows, tile, cols, tile).max(axis=(1, 3))


def outputs(net: model_lib.KeypointNet, normalized, values, layout: dict):
  """The network's dense outputs for one [h, w] normalised frame, computed on the windows
  of the ``max_tiles`` best tiles only.

  Args:
    net: the network.
    normalized: [h, w], as ``model.normalize`` gives it.
    values: [rows, cols] tile values (``tile_values``).
    layout: ``geometry``'s.

  Returns:
    (outputs as ``KeypointNet.__call__`` for [1, h, w], with logits -inf off the computed
    tiles; computed [h, w] bool).
  """
  h, w = normalized.shape
  tile, margin, window = layout["tile"], layout["margin"], layout["window"]
  rows, cols = layout["grid"]
  padded_h, padded_w = layout["padded"]
  _, best = jax.lax.top_k(values.reshape(-1), layout["max_tiles"])
  tile_rows, tile_cols = best // cols, best % cols
  # Zero padding to the network's alignment, as the network pads the whole frame.
  frame = jnp.pad(normalized, ((0, padded_h - h), (0, padded_w - w)))
  top = jnp.clip(tile_rows * tile - margin, 0, padded_h - window)
  left = jnp.clip(tile_cols * tile - margin, 0, padded_w - window)
  windows = jax.vmap(lambda r, c: jax.lax.dynamic_slice(frame, (r, c), (window, window)))(top, left)
  dense = net.forward(windows)
  fills = {"logits": -jnp.inf, "offsets": 0.0, "log_sigma": 0.0}

  def tile_of(x, r, c, fill):
    # A last tile may run past the padded frame: pad so its slice stays in bounds.
    extra = [(0, tile), (0, tile)] + [(0, 0)] * (x.ndim - 2)
    x = jnp.pad(x, extra, constant_values=fill)
    start = (r, c) + (0,) * (x.ndim - 2)
    return jax.lax.dynamic_slice(x, start, (tile, tile) + x.shape[2:])

  canvas = {}
  for key, dense_values in dense.items():
    fill = fills[key]
    pieces = jax.vmap(lambda x, r, c, fill=fill: tile_of(x, r, c, fill))(
      dense_values, tile_rows * tile - top, tile_cols * tile - left
    )
    grid = jnp.full((rows, cols) + pieces.shape[1:], fill, pieces.dtype)
    grid = grid.at[tile_rows, tile_cols].set(pieces)
    # [rows, cols, tile, tile, ...] -> [rows * tile, cols * tile, ...], cut to the frame.
    grid = jnp.moveaxis(grid, 2, 1).reshape((rows * tile, cols * tile) + pieces.shape[3:])
    canvas[key] = grid[None, :h, :w]
  computed = jnp.zeros((rows, cols), bool).at[tile_rows, tile_cols].set(True)
  computed = jnp.repeat(jnp.repeat(computed, tile, 0), tile, 1)[:h, :w]
  return canvas, computed


def decode_frame(net, image, layout: dict, settings: Settings, decode_settings: dict, min_score):
  """``head.decode`` of one [h, w] frame: through the cascade, or through the whole
  network when more than ``max_tiles`` tiles are candidates. Returns [1, k] arrays."""
  normalized = model_lib.normalize(image[None], net.normalization)[0]

  def whole(normalized):
    return head.decode(net.forward(normalized[None]), **decode_settings, min_score=min_score)

  values = tile_values(normalized, layout, settings)

  def cascade(normalized):
    dense, computed = outputs(net, normalized, values, layout)
    found = head.decode(dense, **decode_settings, min_score=min_score)
    # Keep detections on computed tiles: off them the probability is 0 and every pixel a
    # tied "peak" of score 0.
    h, w = computed.shape
    row = jnp.clip(jnp.round(found["y"]).astype(jnp.int32), 0, h - 1)
    col = jnp.clip(jnp.round(found["x"]).astype(jnp.int32), 0, w - 1)
    found["valid"] = found["valid"] & computed[row, col] & (found["score"] > 0)
    return found

  candidates = jnp.sum(values > settings.threshold)
  return jax.lax.cond(candidates > layout["max_tiles"], whole, cascade, normalized)


def decode(net, images, settings: Settings, decode_settings: dict, min_score):
  """``head.decode(net(images))`` for [n, h, w] frames through the cascade where it fits
  (``geometry``), frame by frame; the whole network elsewhere."""
  n, h, w = images.shape
  layout = geometry(net, h, w, settings)
  if layout is None:
    return head.decode(net(images), **decode_settings, min_score=min_score)
  found = jax.lax.map(
    lambda image: decode_frame(net, image, layout, settings, decode_settings, min_score), images
  )
  return jax.tree.map(lambda x: x[:, 0], found)
