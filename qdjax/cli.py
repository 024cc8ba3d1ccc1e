"""Shared command-line plumbing: one-line errors, config files, JSON output."""

from __future__ import annotations

import functools
import logging
import sys

from absl import app

# jax logs at INFO that it found no TPU; a user on a CPU does not need to read that.
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

# Errors that mean "bad input", reported as one line. Anything else is a bug and keeps its
# traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError)


class UsageError(ValueError):
  """Bad input from the user; reported without a traceback."""


def one_line_errors(main):
  """Wraps an absl ``main`` so bad input prints ``error: ...`` and exits with status 2."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except app.UsageError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    except USER_ERRORS as e:
      message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      if isinstance(e, KeyError):
        message = f"missing key {message}"
      print(f"error: {message}", file=sys.stderr)
      sys.exit(2)

  return wrapped


def check_no_extra_args(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")


def parse_diffusion(text: str):
  """'0.3' -> 0.3, '0.1:3' -> (0.1, 3.0).

  Raises:
    ValueError: naming the bad text.
  """
  try:
    parts = [float(p) for p in str(text).split(":")]
  except ValueError:
    raise ValueError(f"--diffusion must be a number or lo:hi, got {text!r}") from None
  if len(parts) == 1:
    return parts[0]
  if len(parts) == 2:
    return tuple(parts)
  raise ValueError(f"--diffusion must be a number or lo:hi, got {text!r}")
