"""Shared command-line plumbing: one exit-code convention, one-line errors, config files.

Every script in ``experiments/`` runs through ``run`` and exits with:

- 0: success, and ``--help``;
- 2: bad usage or bad input (an unknown flag or config field, a missing or corrupt file,
  a bad value): one line ``error: ...`` naming the bad value, no traceback;
- 1: anything else: a failure of the machine (disk full, ...) as one line, or a bug, which
  keeps its traceback;
- 130: interrupted (Ctrl-C, SIGINT), 143: terminated (SIGTERM): one line. Both unwind
  like Ctrl-C (cleanup runs, worker processes are stopped); outputs are written to a
  temporary name and renamed when complete (``qdjax.io``), so an interrupted run leaves no
  partial file.

``run`` also turns on JAX's persistent compilation cache (``cache_environment``), so
a second call of a script does not compile its programs again: it holds most of the
fixed cost of a small job (``python experiments/bench.py --what=startup``). Set
``QDJAX_COMPILATION_CACHE=0`` to turn it off, or to a directory to put it there.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from absl import app, flags
from absl import logging as absl_logging

# jax logs at INFO that it found no TPU; a user on a CPU does not need to read that.
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process that a SIGTERM ended


class Terminated(KeyboardInterrupt):
  """A SIGTERM, raised where the program is, so it unwinds as Ctrl-C does (``run``)."""


def interrupt_exit(error: KeyboardInterrupt) -> tuple[str, int]:
  """The word and exit status for an interrupt: SIGTERM (143) or Ctrl-C (130)."""
  if isinstance(error, Terminated):
    return "terminated", EXIT_TERMINATED
  return "interrupted", EXIT_INTERRUPTED


# The persistent compilation cache: unset, the user's cache directory; 0/off/false/no, off;
# anything else, the directory to use.
CACHE_ENV = "QDJAX_COMPILATION_CACHE"
CACHE_MAX_BYTES = 1 << 30  # least recently used programs are dropped beyond this

# Errors that mean "bad input", reported as one line with EXIT_USAGE. Other OSErrors (disk
# full, ...) are one line with EXIT_FAILURE; anything else is a bug and keeps its traceback.
USER_ERRORS = (
  ValueError,
  FileNotFoundError,
  FileExistsError,
  NotADirectoryError,
  IsADirectoryError,
  PermissionError,
  KeyError,
)

# What loading a broken config file raises (ml_collections passes these through).
_CONFIG_ERRORS = (
  OSError,
  SyntaxError,
  ImportError,
  AttributeError,
  NameError,
  KeyError,
  TypeError,
  ValueError,
)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
  """Prints ``error: message`` (one line) to stderr and exits with ``code``."""
  from tqdm import tqdm

  # A progress bar left open by the failure would share the error's line.
  for bar in list(getattr(tqdm, "_instances", ())):
    bar.close()
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  # Exit at once: cleanup has run while the error unwound (temporary files removed,
  # checkpoints closed), and native threads still busy (an XLA compilation, TensorStore
  # reads) can crash or print tracebacks while the interpreter shuts down around them.
  os._exit(code)


def _first_line(error: BaseException) -> str:
  lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
  return lines[0] if lines else type(error).__name__


def one_line_errors(main):
  """Wraps an absl ``main`` so bad input, failures and Ctrl-C end in one line (see above)."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except app.UsageError as e:
      fail(_first_line(e))
    except KeyError as e:
      fail(f"missing key {_first_line(e)}")
    except USER_ERRORS as e:
      fail(_first_line(e))
    except OSError as e:
      fail(_first_line(e), EXIT_FAILURE)
    except KeyboardInterrupt as e:
      word, code = interrupt_exit(e)
      fail(f"{word}; no partial output was written", code)

  return wrapped


def _config_path(default: str) -> str:
  """The ``--config`` file named on the command line (``path[:arg]``), else ``default``."""
  argv = sys.argv[1:]
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return default


def _config_error(error: BaseException, path: str) -> str:
  """One line for a config file that failed to load or an override that does not apply."""
  if isinstance(error, SyntaxError):
    return f"cannot load --config={path}: {error.msg} (line {error.lineno})"
  if isinstance(error, (AttributeError, KeyError)):
    field = _first_line(error).strip("\"'")
    if "get_config" in field:
      return f"cannot load --config={path}: it defines no get_config()"
    # Name the override as given: --config.model.bogus, not just 'bogus'.
    for arg in sys.argv[1:]:
      name = arg.split("=", 1)[0].lstrip("-")
      if name.startswith("config.") and (name == f"config.{field}" or name.endswith(f".{field}")):
        return f"no such config field: --{name} (in --config={path})"
    return f"no such config field {field!r} in --config={path}"
  # ml_collections wraps a missing file's FileNotFoundError in an OSError whose last line
  # names the file and the reason.
  lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
  detail = lines[-1] if lines else type(error).__name__
  return f"cannot load --config={path}: {detail}"


_CONFIG = {}  # the --config flag's holder and default file, once defined


def define_config(script: str, name: str, help_text: str):
  """``--config``, defaulting to ``configs/<name>.py`` beside ``script`` (any working dir).

  Fields are overridden with ``--config.<field>=value``. A broken config file, an unknown
  field or a bad override value ends in one line (exit 2), not a traceback.

  Args:
    script: the calling script's ``__file__``.
    name: the default config file's stem in ``experiments/configs``.
    help_text: the flag's help.
  """
  from ml_collections import config_flags

  default = str(Path(script).resolve().parent / "configs" / f"{name}.py")
  try:
    # The default file is read, and the --config.* overrides defined, right here.
    holder = config_flags.DEFINE_config_file("config", default, help_text, lock_config=True)
  except _CONFIG_ERRORS as e:
    fail(_config_error(e, _config_path(default)))
  # Listed by --help with the script's own flags, not only by --helpfull.
  flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[holder.name])
  _CONFIG.update(holder=holder, default=default)
  return holder


_HELP_FLAGS = ("help", "?", "helpshort", "helpfull", "helpxml")


def _parse_flags(argv):
  """absl's parsing, with bad flags, config files and fields as one line (exit 2)."""
  try:
    try:
      rest = flags.FLAGS(argv)
    except SystemExit as e:
      # absl exits with status 1 after printing --help; asking for help is not a failure.
      if e.code == 1 and any(a.split("=")[0].lstrip("-") in _HELP_FLAGS for a in argv[1:]):
        sys.exit(0)
      raise
    if _CONFIG:
      _CONFIG["holder"].value.keys()  # a config file that failed to load raises on access
    return rest
  except flags.Error as e:
    if "Error whilst parsing config file" in str(e):  # ml_collections' wrapped traceback
      fail(_config_error(e, _config_path(_CONFIG.get("default", "?"))))
    fail(_first_line(e))
  except _CONFIG_ERRORS as e:
    fail(_config_error(e, _config_path(_CONFIG.get("default", "?"))))


def compilation_cache_dir() -> Path | None:
  """Where ``use_compilation_cache`` keeps compiled programs: ``$QDJAX_COMPILATION_CACHE``,
  or ``$XDG_CACHE_HOME/qdjax/jax`` (default ``~/.cache/qdjax/jax``); None when the variable
  is 0, off, false or no."""
  value = os.environ.get(CACHE_ENV, "").strip()
  if value.lower() in ("0", "off", "false", "no"):
    return None
  if value:
    return Path(value).expanduser()
  root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
  return Path(root) / "qdjax" / "jax"


def use_compilation_cache() -> Path | None:
  """Turns on JAX's persistent compilation cache (see ``compilation_cache_dir``) for every
  program, however small or quick to compile: a command line compiles a few dozen small
  ones, and together they are most of its fixed cost. A directory already chosen through
  JAX's own ``JAX_COMPILATION_CACHE_DIR`` is kept. JAX checks that a cached program was
  compiled for this machine and version, and recompiles when it was not.

  Returns:
    the cache directory, or None when it is off.
  """
  import jax

  directory = jax.config.jax_compilation_cache_dir
  if directory:
    return Path(directory)
  directory = compilation_cache_dir()
  if directory is None:
    return None
  jax.config.update("jax_compilation_cache_dir", str(directory))
  for name, value in _CACHE_SETTINGS.items():
    jax.config.update(name, value)
  return directory


# JAX's cache settings besides the directory: every program is kept. ``use_compilation_cache``
# sets them in ``jax.config``; ``cache_environment`` in the variables JAX reads on import,
# named as the settings in upper case.
_CACHE_SETTINGS = {
  "jax_persistent_cache_min_compile_time_secs": 0.0,
  "jax_persistent_cache_min_entry_size_bytes": 0,
  "jax_compilation_cache_max_size": CACHE_MAX_BYTES,
}
_JAX_CACHE_DIR_ENV = "JAX_COMPILATION_CACHE_DIR"
_JAX_CACHE_ENV = {name.upper(): str(value) for name, value in _CACHE_SETTINGS.items()}
# Where ``cache_environment`` also writes the directory it put in JAX_COMPILATION_CACHE_DIR.
# A child process inherits both: where they agree, the directory was qdjax's choice, and the
# child makes it again from its own QDJAX_COMPILATION_CACHE; where they differ, the user set
# JAX's variable, and it is kept.
_CACHE_MARK_ENV = "QDJAX_JAX_COMPILATION_CACHE_DIR"


def cache_environment() -> Path | None:
  """``use_compilation_cache`` through JAX's environment variables, for a process that has
  not imported jax yet (jax reads them on import; child processes inherit them): a command
  line whose input is refused before any computation then never loads jax.

  Returns:
    the cache directory, or None when it is off.
  """
  env = os.environ
  chosen = env.get(_JAX_CACHE_DIR_ENV)
  if chosen and env.get(_CACHE_MARK_ENV) != chosen:
    return Path(chosen)  # the user's own choice, with the user's own settings
  directory = compilation_cache_dir()
  if directory is None:
    for name in (_JAX_CACHE_DIR_ENV, _CACHE_MARK_ENV, *_JAX_CACHE_ENV):
      env.pop(name, None)
    return None
  env[_JAX_CACHE_DIR_ENV] = env[_CACHE_MARK_ENV] = str(directory)
  env.update(_JAX_CACHE_ENV)
  return directory


def run(main) -> None:
  """``absl.app.run(main)`` under the exit-code convention above, with the persistent
  compilation cache on (``cache_environment``, or ``use_compilation_cache`` where the script
  has imported jax already).

  Library logging (absl, Orbax, TFDS) stays at WARNING unless ``--verbosity`` asks for more.
  """

  def quiet_main(argv):
    verbose = flags.FLAGS["verbosity"].present
    if not verbose:
      quiet_logging()
    # Through the environment unless the script imported jax before its flags were read.
    cache = use_compilation_cache() if "jax" in sys.modules else cache_environment()
    if cache is not None and not verbose:
      quiet_cpu_cache_loader()
    return one_line_errors(main)(argv)

  # Scripts draw off-screen: a figure is only ever saved.
  os.environ.setdefault("MPLBACKEND", "Agg")
  sys.excepthook = _excepthook
  # A handler of our own for Ctrl-C: asyncio.run (inside Orbax's saves) replaces only
  # Python's default handler, with one that cancels its task, and a cancelled save can
  # absorb the interrupt, so that training would go on.
  signal.signal(signal.SIGINT, _interrupt)
  signal.signal(signal.SIGTERM, _terminate)
  sys.unraisablehook = _unraisablehook
  try:
    app.run(quiet_main, flags_parser=_parse_flags)
  except KeyboardInterrupt as e:  # during flag parsing or imports, before main's own handler
    word, code = interrupt_exit(e)
    fail(f"{word}; no partial output was written", code)


def quiet_cpu_cache_loader() -> None:
  """XLA's C++ log at FATAL only, so that programs loaded from the cache print nothing.

  XLA:CPU logs an error for every program it loads from the persistent cache, because it
  takes the compiler's tuning preferences (+prefer-no-gather, +prefer-no-scatter) recorded
  with the program for CPU features that this host lacks, even on the host that compiled
  it. The program loads and runs; only the message is wrong (10 to 144 lines per run).
  XLA's C++ log level is set through jaxlib's own setter (TF_CPP_MIN_LOG_LEVEL no longer
  reaches it), which loads without jax itself. ``--verbosity`` keeps XLA's log as it was.
  """
  try:
    from jaxlib import utils

    utils.absl_set_min_log_level(3)  # absl's kFatal
  except (ImportError, AttributeError):
    pass


def _interrupt(signum, frame) -> None:
  raise KeyboardInterrupt


def _terminate(signum, frame) -> None:
  raise Terminated(f"signal {signum}")


def _excepthook(kind, value, traceback) -> None:
  # TensorStore reads still in flight when an Orbax restore fails call back into an asyncio
  # loop that Orbax has closed; each prints "RuntimeError: Event loop is closed" at exit.
  # The restore's own error has been reported by then.
  if kind is RuntimeError and str(value) == "Event loop is closed":
    return
  sys.__excepthook__(kind, value, traceback)


def _unraisablehook(unraisable) -> None:
  if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed":
    return
  sys.__unraisablehook__(unraisable)


def quiet_logging() -> None:
  """absl and Python logging at WARNING: Orbax and TFDS log every step at INFO.

  jax's loggers are left to inherit that level: jax takes a level set on its own logger
  before it is imported as its C++ log level too, which would undo
  ``quiet_cpu_cache_loader``.
  """
  absl_logging.set_verbosity(absl_logging.WARNING)
  for name in ("absl", "orbax", "tensorflow_datasets"):
    logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def removed_on_failure(directory: str | os.PathLike, keep=None) -> Iterator[Path]:
  """Yields ``directory``; if it did not exist before and the body fails, removes it.

  So a failed or interrupted run leaves no half-made output directory behind.

  Args:
    directory: the run's output directory (not created here).
    keep: optional ``keep(directory) -> bool``: keep it anyway (e.g. it holds a checkpoint a
      rerun resumes from).
  """
  directory = Path(directory).expanduser()
  # The outermost directory this run would create (parents included).
  created = None
  for candidate in (directory, *directory.absolute().parents):
    if candidate.exists():
      break
    created = candidate
  try:
    yield directory
  except BaseException:
    if created is not None and created.is_dir() and not (keep and keep(directory)):
      shutil.rmtree(created, ignore_errors=True)
    raise


def check_no_extra_args(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")


def config_from_flags(argv, config_flag, *overrides):
  """The ``--config`` ConfigDict, with each override flag that was given copied into it.

  Each flag in ``overrides`` sets the config field of its own name (``--seed=3`` sets
  ``config.seed``); a flag left out keeps the config's value.

  Raises:
    app.UsageError: ``argv`` holds more than the program's name.
  """
  check_no_extra_args(argv)
  config = config_flag.value
  with config.unlocked():
    for flag in overrides:
      if flag.value is not None:
        config[flag.name] = flag.value
  return config


def output_dir(path: str | os.PathLike) -> Path:
  """``path`` as a Path, for ``--output_dir``, checked before any work.

  Raises:
    NotADirectoryError: ``path`` exists and is not a directory.
    PermissionError: no file can be made in it (or, while it does not exist, where it would be).
  """
  from qdjax import io

  path = Path(path)
  if path.exists() and not path.is_dir():
    raise NotADirectoryError(f"--output_dir is not a directory: {path}")
  return io.check_output_dir(path)


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
