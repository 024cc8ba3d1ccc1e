"""One way to run a jitted function over many frames: fixed-size, padded chunks.

    out = chunks.map_chunks(jitted_fn, images, chunk=512)

Every call of ``fn`` sees the same leading size, so one compilation serves a whole
stack, and no call holds more than ``chunk`` rows, so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np


def call_size(n: int, chunk: int, powers_of_two: bool = True, minimum: int = 8) -> int:
  """The leading size of every call for ``n`` rows: ``chunk``, or fewer for short inputs.

  With ``powers_of_two`` a short input is padded to the next power of two (at least
  ``minimum``), so a stream of calls of many lengths shares a few compiled programs;
  without, it runs at its own length (one compilation per length, no wasted rows).
  """
  if chunk < 1:
    raise ValueError(f"chunk must be >= 1, got {chunk}")
  if not powers_of_two:
    return max(1, min(chunk, n))
  return min(chunk, max(minimum, 1 << max(n - 1, 0).bit_length()))


def stream_chunks(
  fn: Callable, inputs, chunk: int, *, powers_of_two: bool = True, minimum: int = 8
) -> Iterator[tuple[int, Any]]:
  """``fn`` over the leading axis of ``inputs``, chunk by chunk, in order.

  Chunk k + 1 is dispatched before chunk k is yielded: JAX dispatches asynchronously, so
  the device computes the next chunk while the caller handles this one (copies it, writes
  it to a file).

  Args:
    fn, inputs, chunk, powers_of_two, minimum: as in ``map_chunks``.

  Yields:
    (first row, ``fn``'s output pytree for the chunk's rows as NumPy arrays): each chunk
    padded to the call size by repeating its last row, and the padding cut off again.
  """
  n = len(jax.tree.leaves(inputs)[0])
  size = call_size(n, chunk, powers_of_two, minimum)
  pending = None
  for start in range(0, n, size):
    block = jax.tree.map(lambda x, start=start: np.asarray(x[start : start + size]), inputs)
    keep = len(jax.tree.leaves(block)[0])
    if keep < size:
      pad = size - keep
      block = jax.tree.map(lambda x, pad=pad: np.concatenate([x, np.repeat(x[-1:], pad, 0)]), block)
    result = fn(block)
    if pending is not None:
      yield _on_host(*pending)
    pending = (start, keep, result)
  if pending is not None:
    yield _on_host(*pending)


def _on_host(start: int, keep: int, result):
  result = jax.device_get(result)
  return start, jax.tree.map(lambda x: np.asarray(x)[:keep], result)


def map_chunks(
  fn: Callable,
  inputs,
  chunk: int,
  *,
  powers_of_two: bool = True,
  minimum: int = 8,
  progress=None,
):
  """``fn`` over the leading axis of ``inputs``, in chunks of one size, on the host after.

  Args:
    fn: a (jitted) function of a pytree of [m, ...] arrays to a pytree of [m, ...] arrays,
      row i of the output depending only on row i of the input.
    inputs: an array or pytree of arrays sharing the leading axis n (NumPy or JAX).
    chunk: the most rows per call.
    powers_of_two, minimum: see ``call_size``.
    progress: optional tqdm-like bar, advanced by the rows of each chunk.

  Returns:
    ``fn``'s output pytree as NumPy arrays of n rows: each chunk is padded to the call
    size by repeating its last row, and the padding is cut off again. Chunk k + 1
    computes while chunk k is copied to the host (``stream_chunks``).
  """
  n = len(jax.tree.leaves(inputs)[0])
  call_size(n, chunk, powers_of_two, minimum)  # a bad chunk fails here, even with no rows
  if n == 0:
    row = jax.tree.map(lambda x: np.zeros((1,) + np.shape(x)[1:], np.asarray(x).dtype), inputs)
    shapes = jax.eval_shape(fn, row)
    return jax.tree.map(lambda s: np.zeros((0,) + s.shape[1:], s.dtype), shapes)
  out = None
  for start, part in stream_chunks(fn, inputs, chunk, powers_of_two=powers_of_two, minimum=minimum):
    if out is None:  # filled in place: no list of parts to concatenate at the end
      out = jax.tree.map(lambda x: np.empty((n,) + x.shape[1:], x.dtype), part)
    rows = len(jax.tree.leaves(part)[0])
    for dest, piece in zip(jax.tree.leaves(out), jax.tree.leaves(part), strict=True):
      dest[start : start + rows] = piece
    if progress is not None:
      progress.update(rows)
  return out
