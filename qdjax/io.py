"""Reading frames and writing results, safely.

Every writer goes through ``atomic_path``: output is written to a temporary name beside
the target and renamed into place, so an interrupted command never leaves a truncated
file where a good one was.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import math
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

FRAME_SUFFIXES = (".npy", ".npz", ".tif", ".tiff")

# What numpy, zipfile and tifffile (TiffFileError is a ValueError) raise on a truncated,
# empty or foreign file.
_CORRUPT_FILE_ERRORS = (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
  """Whether two paths name one file (after symlinks, ``..``, and hard links)."""
  a, b = Path(a), Path(b)
  if a.resolve() == b.resolve():
    return True
  return a.exists() and b.exists() and os.path.samefile(a, b)


def check_output_path(path: str | os.PathLike, *, inputs=()) -> Path:
  """Fails early, before any long computation, on an output file that cannot be written.

  Args:
    path: the output file.
    inputs: the command's input files; writing over one of them is refused.

  Raises:
    IsADirectoryError: ``path`` is a directory (or ends in a separator).
    FileNotFoundError: ``path``'s directory does not exist.
    ValueError: ``path`` is one of ``inputs``.
    PermissionError: no file can be made in ``path``'s directory.
  """
  text = os.fspath(path)
  path = Path(path)
  if text.endswith(("/", os.sep)) or path.is_dir():
    raise IsADirectoryError(f"output {text} is a directory; give a file name")
  parent = path.parent if str(path.parent) else Path(".")
  if not parent.is_dir():
    raise FileNotFoundError(f"output directory does not exist: {parent}")
  for source in inputs:
    if same_file(path, source):
      raise ValueError(f"output {text} would overwrite {os.fspath(source)}, an input or output")
  check_writable_dir(parent, what=f"output {text}")
  return path


# What making a file says when the directory, not the machine, is the problem.
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def check_writable_dir(directory: str | os.PathLike, what: str | None = None) -> None:
  """Fails unless a file can be made in ``directory``: one is made and removed again.

  (Permission bits alone do not tell: root ignores them, and a read-only file system or an
  immutable directory refuses whatever they say.)

  Raises:
    PermissionError: naming ``what`` (default: the directory) and the reason.
  """
  what = what or f"directory {os.fspath(directory)}"
  try:
    fd, tmp = tempfile.mkstemp(prefix=".qdjax-write-test.", dir=directory)
  except OSError as e:
    if e.errno in _NOT_WRITABLE:
      raise PermissionError(
        f"cannot write {what}: directory {os.fspath(directory)} is not writable ({e.strerror})"
      ) from None
    raise
  os.close(fd)
  os.unlink(tmp)


def check_output_dir(path: str | os.PathLike) -> Path:
  """Fails early on an output directory (made by the command if missing) that cannot be
  written: it is a file, or it or the nearest existing folder above it is not writable.

  Raises:
    NotADirectoryError: ``path`` (or a folder above it) exists and is not a directory.
    PermissionError: no file can be made where the directory is or would be.
  """
  path = Path(path).expanduser()
  for existing in (path, *path.absolute().parents):
    if existing.exists():
      break
  if not existing.is_dir():
    raise NotADirectoryError(f"output directory {os.fspath(path)}: {existing} is not a directory")
  check_writable_dir(existing, what=f"output directory {os.fspath(path)}")
  return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
  """Yields a temporary path; on success it is renamed to ``path``.

  Raises:
    FileNotFoundError: if the parent directory does not exist.
  """
  path = check_output_path(path)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
  os.close(fd)
  tmp = Path(tmp)
  try:
    yield tmp
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def save_npz(path, **arrays) -> None:
  """``np.savez_compressed`` through ``atomic_path``."""
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez_compressed(f, **arrays)


class NpzWriter:
  """Adds arrays to an open, uncompressed .npz archive (see ``npz_writer``)."""

  def __init__(self, archive: zipfile.ZipFile):
    self._archive = archive

  def add(self, name: str, array) -> None:
    """Writes ``array`` whole, as ``np.savez`` does."""
    with self._archive.open(f"{name}.npy", "w", force_zip64=True) as member:
      np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)

  @contextlib.contextmanager
  def stream(self, name: str, shape: tuple[int, ...], dtype) -> Iterator:
    """Yields ``write(piece)``: the array ``name`` of ``shape`` is written piece by piece,
    each piece a run of its rows, in order. Fewer or more rows than ``shape`` is an error."""
    dtype = np.dtype(dtype)
    expected_bytes = math.prod(shape) * dtype.itemsize
    written = 0
    with self._archive.open(f"{name}.npy", "w", force_zip64=True) as member:
      header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
      np.lib.format.write_array_header_1_0(member, {**header, "shape": tuple(shape)})

      def write(piece) -> None:
        nonlocal written
        piece = np.ascontiguousarray(piece, dtype)
        if piece.shape[1:] != tuple(shape[1:]):
          raise ValueError(f"{name}: a piece of shape {piece.shape} in an array {shape}")
        member.write(piece.data.cast("B"))
        written += piece.nbytes

      yield write
      if written != expected_bytes:
        raise ValueError(f"{name}: wrote {written} bytes of {expected_bytes}")


@contextlib.contextmanager
def npz_writer(path) -> Iterator[NpzWriter]:
  """An uncompressed .npz (as ``np.savez`` writes it) written atomically, array by array.

  Unlike ``np.savez``, an array may be streamed in pieces (``NpzWriter.stream``) while the
  rest is still being computed.
  """
  with atomic_path(path) as tmp:
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
      yield NpzWriter(archive)


def write_text(path, text: str) -> None:
  with atomic_path(path) as tmp:
    tmp.write_text(text)


def save_figure(fig, path, **kwargs) -> None:
  """Saves a matplotlib figure atomically (format from ``path``'s suffix)."""
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", **kwargs)


def check_stack(frames, dtype, wrong_rank: str, too_few: str) -> np.ndarray:
  """frames as a finite [n >= 2, h, w] array of ``dtype``.

  Raises:
    ValueError: ``wrong_rank`` or ``too_few`` with what was given, or the first frame with a
      NaN or infinite pixel.
  """
  frames = np.asarray(frames, dtype)
  if frames.ndim != 3:
    raise ValueError(f"{wrong_rank}, got shape {frames.shape}")
  if len(frames) < 2:
    raise ValueError(f"{too_few}, got {len(frames)}")
  _check_finite(frames, 0)
  return frames


def _check_finite(block: np.ndarray, start: int, source: str | None = None) -> None:
  """Raises ValueError naming ``source``, the frame and the pixel of the first NaN or
  infinite value in ``block`` (frames ``start``, ``start + 1``, ...)."""
  bad = ~np.isfinite(block)
  if not bad.any():
    return
  index, row, column = (int(i) for i in np.argwhere(bad)[0])
  count = int(bad[index].sum())
  where = f"{source}: " if source else ""
  value = "NaN" if np.isnan(block[index, row, column]) else "infinite"
  raise ValueError(
    f"{where}frame {start + index} has NaN or infinite pixels: the first at row {row}, "
    f"column {column} (x {column}, y {row}) is {value}, {count} in that frame; replace "
    "them (e.g. by the frame's median, where a registration left no data) and run again"
  )


LAYOUTS = ("auto", "stack", "channels")


def _looks_like_channels(shape: tuple[int, ...]) -> bool:
  """(h, w, 3 or 4) with h and w many times the last axis: an RGB(A) image's shape, which
  could also be a stack of frames a few pixels wide."""
  return shape[-1] in (3, 4) and min(shape[:2]) >= 4 * shape[-1]


def _check_frames(
  frames: np.ndarray, source: str, movie: bool = False, layout: str = "auto"
) -> np.ndarray:
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
  if movie and frames.ndim != 3:
    raise ValueError(
      f"{source}: a movie must be an array (frames, h, w), got a {frames.ndim}-D array "
      f"of shape {frames.shape}"
    )
  if movie and len(frames) < 2:
    raise ValueError(f"{source}: a movie needs at least 2 frames, got {len(frames)}")
  if layout == "channels":
    if frames.ndim != 3:
      raise ValueError(
        f"{source}: layout 'channels' needs one (h, w, channels) image, got shape {frames.shape}"
      )
    frames = np.moveaxis(frames, -1, 0)
  elif frames.ndim == 3 and layout == "auto" and _looks_like_channels(frames.shape):
    n, h, w = frames.shape
    raise ValueError(
      f"{source}: shape {frames.shape} is ambiguous: one {n} x {h} image with {w} colour "
      f"channels, or {n} frames of {h} x {w} px? Say which (layout 'channels': each "
      "channel a frame; 'stack': frames as stored; locate.py --layout)"
    )
  if frames.ndim == 2:
    frames = frames[None]
  if frames.ndim != 3:
    raise ValueError(
      f"{source}: expected frames of rank 2 (h, w) or 3 (n, h, w), "
      f"got rank {frames.ndim} with shape {frames.shape}"
    )
  if 0 in frames.shape[1:]:
    raise ValueError(f"{source}: zero-size frame, shape {frames.shape}")
  if not np.issubdtype(frames.dtype, np.number) or np.issubdtype(frames.dtype, np.complexfloating):
    raise ValueError(f"{source}: frames must be real numbers, got dtype {frames.dtype}")
  return frames


def _read(path: Path, suffix: str):
  if suffix == ".npy":
    return np.load(path, mmap_mode="r", allow_pickle=False)
  if suffix == ".npz":
    with np.load(path, allow_pickle=False) as data:
      if "images" not in data:
        found = ", ".join(data.files) or "none"
        raise KeyError(f'.npz has no array named "images" (found: {found})')
      return data["images"]
  import tifffile

  try:
    return tifffile.memmap(path, mode="r")
  except ValueError:  # compressed or tiled TIFF: cannot be memory-mapped, read it whole
    return tifffile.imread(path)


def open_frames(path: str | os.PathLike, movie: bool = False, layout: str = "auto") -> np.ndarray:
  """Frames from .npy, .npz (array ``images``) or .tif/.tiff, as a lazy [n, h, w] array.

  With ``movie=True`` the file must hold a (T, h, w) stack with T >= 2 (a 2-D array is
  one frame, not a movie).

  A 3-D array whose last axis is 3 or 4 and several times smaller than the other two,
  such as (64, 64, 3), may be an RGB(A) image or a stack of narrow frames: ``layout``
  says which ('channels': one image, each of its channels read as a frame; 'stack': the
  frames as stored); with 'auto' (the default) such a shape is refused.

  .npy files are memory-mapped and TIFF stacks are opened through tifffile's memmap or
  zarr store where possible, so a stack of a million frames is not read whole; slice it
  in chunks (see ``iter_chunks``).

  Raises:
    FileNotFoundError: missing file.
    ValueError: unreadable file, unknown suffix, wrong rank, or an ambiguous shape.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no such input file: {path}")
  suffix = path.suffix.lower()
  if suffix not in FRAME_SUFFIXES:
    raise ValueError(
      f"{path}: unknown frame format {suffix!r}; use one of {', '.join(FRAME_SUFFIXES)}"
    )
  try:
    frames = _read(path, suffix)
  except KeyError as e:
    raise ValueError(f"{path}: {e.args[0]}") from None
  except _CORRUPT_FILE_ERRORS as e:
    raise ValueError(f"{path}: cannot read frames ({type(e).__name__}: {e})") from None
  return _check_frames(frames, str(path), movie, layout)


def iter_chunks(frames, chunk: int, source: str | None = None) -> Iterator[tuple[int, np.ndarray]]:
  """(first index, float32 [<=chunk, h, w]) pieces of a possibly lazy frame stack.

  Args:
    frames: [n, h, w], e.g. from ``open_frames``.
    chunk: frames per piece.
    source: the file they come from, named in errors.

  Raises:
    ValueError: if a chunk holds NaN or infinite pixels (naming the file, frame and pixel).
  """
  for start in range(0, len(frames), chunk):
    block = np.asarray(frames[start : start + chunk], dtype=np.float32)
    _check_finite(block, start, source)
    yield start, block


def write_localisations(path, rows) -> None:
  """Writes ``frame,x,y,score`` CSV atomically. ``rows``: iterable of 4-tuples."""
  with atomic_path(path) as tmp:
    with open(tmp, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["frame", "x", "y", "score"])
      for frame, x, y, score in rows:
        writer.writerow([int(frame), f"{x:.4f}", f"{y:.4f}", f"{score:.6g}"])


def write_csv(path, table, formats: dict | None = None) -> None:
  """Writes a pandas DataFrame as CSV atomically; ``formats``: column -> printf format."""
  table = table.copy()
  for column, fmt in (formats or {}).items():
    if column in table:
      table[column] = table[column].map(lambda v, fmt=fmt: fmt % v)
  with atomic_path(path) as tmp:
    table.to_csv(tmp, index=False)
