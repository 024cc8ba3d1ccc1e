"""Many recordings tracked in one run: resumable, in this process or on Dask workers.

    summary = batch.track_many("movies/", "out", method="trackpy", preset="invivo")
    summary = batch.track_many("movies/*.tif", "out", workers=4)         # a local cluster
    summary = batch.track_many("list.txt", "out", scheduler="tcp://host:8786")

Each recording ``<stem>.<ext>`` is tracked with ``files.track_file`` and gives, in the
output directory, ``<stem>_tracks.csv``, ``<stem>_diffusion.csv`` and
``<stem>_settings.json``: the settings it was tracked with (locator, preset, track
options, qdjax version), the input's size and modification time, and its summary row.
``summary.csv`` holds one row per recording (``SUMMARY_COLUMNS``); it is rewritten, whole
and atomically, as each recording finishes, so an interrupted run keeps what it finished.

A rerun skips a recording whose outputs all exist and whose settings file matches this
run's settings and the input as it is now (status 'skipped', its row read back from that
file), unless ``overwrite=True``. A recording that fails (an unreadable file, a movie of
the wrong shape, no track found) gets status 'failed' and its error in one line; the
others go on, and its settings file is removed, so a rerun tries it again.

With ``workers=N`` the recordings run on a ``dask.distributed.LocalCluster`` of N
single-threaded worker processes; with ``scheduler=ADDRESS`` on an existing Dask cluster
(its workers need qdjax installed and the same paths). Each worker process builds the
locator (loads the model) once, on its first recording, and keeps it for the rest
(``_locator``). Local workers are started with ``spawn``, so a script that asks for them
runs its work under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import pickle
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path

import pandas as pd

from qdjax import io
from qdjax.localize import locator
from qdjax.sim import presets
from qdjax.tracks import files

SUMMARY_COLUMNS = [
  "name",  # the input's file name without its suffix: the outputs' prefix
  "path",  # the input file
  "status",  # 'done', 'skipped' (outputs of the same settings found) or 'failed'
  "error",  # the failure in one line, else empty
  "frames",
  "tracks",  # tracks kept (>= min_detections detections)
  "D_um2_s",  # ensemble D over tracks, weighted by displacements
  "D_se_um2_s",  # its standard error, clustered by track
  "D_edge_um2_s",  # the edge-corrected ensemble D over windows (docs/diffusion.md)
  "D_edge_se_um2_s",
  "drift_subtracted",  # whether motion common to all tracks was subtracted
  "drift_x_px",  # that motion's total over the movie, px
  "drift_y_px",
  "tissue_corrected",  # whether the tissue's motion read from the background was taken out
  "tissue_rms_px",  # that motion's spread (x and y together), px
  "background_flattened",  # whether it was localised less its static background
  "seconds",  # wall time of tracking the recording (of the run that did it, when skipped)
]
SUMMARY_FILE = "summary.csv"
# Names of what a recording writes, after its stem.
OUTPUT_SUFFIXES = {
  "tracks": "_tracks.csv",
  "diffusion": "_diffusion.csv",
  "settings": "_settings.json",
  "plot": "_tracks.png",
  "drift": "_drift.csv",
  "tissue": "_tissue.csv",
  "tissue_plot": "_tissue.png",
  "napari": "_napari.csv",
  "trackmate": "_trackmate.xml",
}
# A worker process is one of several on the machine: one thread each for XLA, BLAS and
# OpenMP, so N workers use N cores (``python experiments/bench.py --what=batch``).
WORKER_ENV = {
  "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
  "OMP_NUM_THREADS": "1",
  "OPENBLAS_NUM_THREADS": "1",
  "MKL_NUM_THREADS": "1",
}
_GLOB_CHARACTERS = set("*?[")
# Failures of a recording that are its input's fault (unreadable, wrong shape, no track):
# the command line's exit status 2; any other (a full disk, a dead worker, a bug) is 1.
BAD_INPUT = (ValueError, KeyError, FileNotFoundError, IsADirectoryError, NotADirectoryError)


# --- inputs ------------------------------------------------------------------------------


def _is_movie(path: Path) -> bool:
  return path.suffix.lower() in io.FRAME_SUFFIXES


def _expand(spec, list_file_allowed: bool = True) -> list[Path]:
  text = os.fspath(spec)
  path = Path(text).expanduser()
  if path.is_dir():
    return sorted(p for p in path.iterdir() if p.is_file() and _is_movie(p))
  if path.is_file():
    if _is_movie(path):
      return [path]
    if not list_file_allowed:
      raise ValueError(f"{text}: not a movie ({', '.join(io.FRAME_SUFFIXES)})")
    return _read_list_file(path)
  if _GLOB_CHARACTERS & set(text):
    matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
    return [p for p in matches if p.is_file() and _is_movie(p)]
  raise FileNotFoundError(f"no such input: {text}")


def _read_list_file(path: Path) -> list[Path]:
  """The movies a list file names: one path (or folder, or glob) a line; blank lines and
  lines starting with # are skipped; relative paths are relative to the list file."""
  try:
    lines = path.read_text().splitlines()
  except UnicodeDecodeError:
    raise ValueError(
      f"{path}: neither a movie ({', '.join(io.FRAME_SUFFIXES)}) nor a text list of movies"
    ) from None
  found = []
  for line in lines:
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    entry = Path(line).expanduser()
    if not entry.is_absolute():
      entry = path.parent / entry
    found.extend(_expand(entry, list_file_allowed=False))
  return found


def expand_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
  """The movie files that ``inputs`` names, in order, each once.

  Args:
    inputs: a movie file, a folder (its .npy, .npz, .tif and .tiff files, not recursive), a
      glob (``**`` recurses), a list file (any other file: one movie, folder or glob a
      line, relative to the list file; # comments), or a sequence of any of these but
      list files.

  Raises:
    FileNotFoundError: a named file or folder does not exist.
    ValueError: no movie found, or two movies with one stem (their outputs would clash).
  """
  if isinstance(inputs, (str, os.PathLike)):
    found = _expand(inputs)
    described = os.fspath(inputs)
  else:
    inputs = list(inputs)
    found = [p for spec in inputs for p in _expand(spec, list_file_allowed=False)]
    described = ", ".join(os.fspath(p) for p in inputs[:3]) + (", ..." if len(inputs) > 3 else "")
  unique = list(dict.fromkeys(p.resolve() for p in found))
  if not unique:
    raise ValueError(f"no movies ({', '.join(io.FRAME_SUFFIXES)}) found in {described or '[]'}")
  stems = {}
  for path in unique:
    if path.stem in stems:
      raise ValueError(
        f"two movies named {path.stem!r} ({stems[path.stem]}, {path}): their outputs would "
        "have the same names; rename one"
      )
    stems[path.stem] = path
  return unique


# --- settings ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LocatorSpec:
  """How a worker builds the locator: ``locator.make``'s arguments or a factory.

  Attributes:
    method, model, workdir: as ``locator.make`` takes them (without ``factory``).
    factory: ``factory() -> Locator`` instead (picklable, for Dask workers).
    key: what identifies the locator in a worker's cache.
    trackpy_workers: trackpy's own worker processes (1 on a Dask worker: no pool in a pool).
    compilation_cache: JAX's persistent compilation cache directory, used in workers too.
  """

  method: str = "model"
  model: str | None = None
  workdir: str | None = None
  factory: Callable[[], locator.Locator] | None = None
  key: str = ""
  trackpy_workers: int | None = None
  compilation_cache: str | None = None


def _json_ready(value):
  """``value`` as JSON writes and reads it back (tuples as lists, keys as strings)."""
  return json.loads(json.dumps(value, default=str, sort_keys=True))


def settings_record(spec: LocatorSpec, preset, track_options: dict) -> dict:
  """What a recording's outputs depend on, besides the input: written into its
  ``<stem>_settings.json`` and compared on a rerun."""
  if spec.factory is not None:
    factory = getattr(spec.factory, "__qualname__", type(spec.factory).__qualname__)
    # By name: what a factory's closure holds may change between runs and mean nothing.
    source = {"factory": f"{getattr(spec.factory, '__module__', '?')}.{factory}"}
  else:
    source = {"method": spec.method, "model": spec.model, "workdir": spec.workdir}
  return _json_ready(
    {
      "qdjax_version": metadata.version("qdjax"),
      "locator": source,
      "preset": preset.to_dict(),
      "track_options": dict(sorted(track_options.items())),
    }
  )


def input_record(path: Path) -> dict:
  """The input as it is now: a changed file is tracked again."""
  stat = path.stat()
  return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _spec(method, model, workdir, locate_factory) -> LocatorSpec:
  if locate_factory is not None:
    try:
      import cloudpickle

      payload = cloudpickle.dumps(locate_factory)
    except (ImportError, pickle.PicklingError, TypeError, AttributeError):
      payload = repr(locate_factory).encode()
    return LocatorSpec(factory=locate_factory, key=hashlib.sha256(payload).hexdigest()[:16])
  locator.check_method(method)
  if method == "model" and model is None and workdir is None:
    from qdjax.detect import inference

    model = inference.default_model()  # recorded by name: a later default is another setting
  if workdir is not None:
    workdir = str(Path(workdir).expanduser().resolve())
  locator.check_model_arguments(method, workdir, model)  # locator.make's checks, before any work
  key = json.dumps([method, model, workdir])
  return LocatorSpec(method=method, model=model, workdir=workdir, key=key)


# --- one recording ---------------------------------------------------------------------------

# This process's locators, by LocatorSpec.key and preset: a Dask worker loads its model once.
_LOCATORS: dict[tuple, locator.Locator] = {}
_LOADS = [0]  # how many locators this process has built (a check that caching works)
_LOCATORS_LOCK = threading.Lock()


def _locator(spec: LocatorSpec, preset) -> locator.Locator:
  key = (spec.key, preset.name if spec.method == "trackpy" else None)
  with _LOCATORS_LOCK:  # a Dask worker may run several threads
    return _LOCATORS[key] if key in _LOCATORS else _build_locator(spec, preset, key)


def _build_locator(spec: LocatorSpec, preset, key) -> locator.Locator:
  if spec.compilation_cache:  # the caller's persistent compilation cache, in a worker too
    import jax

    if not jax.config.jax_compilation_cache_dir:
      from qdjax import cli

      os.environ[cli.CACHE_ENV] = spec.compilation_cache
      cli.use_compilation_cache()
      # XLA:CPU's false warning on every program loaded from the cache, as cli.run silences it.
      cli.quiet_cpu_cache_loader()
  if spec.factory is not None:
    built = spec.factory()
  else:
    built = locator.make(
      spec.method,
      model=spec.model,
      workdir=spec.workdir,
      preset=preset,
      workers=spec.trackpy_workers if spec.method == "trackpy" else None,
    )
  _LOCATORS[key] = built
  _LOADS[0] += 1
  return built


def _close_locators() -> None:
  while _LOCATORS:
    _, one = _LOCATORS.popitem()
    close = getattr(one, "close", None)
    if close is not None:
      close()


def _portable_preset(preset) -> dict:
  """A Preset as plain, picklable fields (its mapping proxies cannot be pickled)."""
  return {
    f.name: dict(v) if isinstance(v, types.MappingProxyType) else v
    for f in dataclasses.fields(preset)
    for v in [getattr(preset, f.name)]
  }


def _restore_preset(fields: dict):
  return presets.Preset(
    **{k: types.MappingProxyType(v) if isinstance(v, dict) else v for k, v in fields.items()}
  )


@dataclasses.dataclass(frozen=True)
class Task:
  """One recording to track (picklable: it travels to a Dask worker)."""

  name: str
  path: str
  outputs: dict
  spec: LocatorSpec
  preset: dict  # _portable_preset
  settings: dict
  track_options: dict


def one_line(error: BaseException) -> str:
  """An error as one line: its message's first line, or its type's name."""
  lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
  text = lines[0] if lines else type(error).__name__
  if isinstance(error, KeyError):
    text = f"missing key {text}"
  elif not isinstance(error, (ValueError, OSError)):
    text = f"{type(error).__name__}: {text}"
  return text


def summary_row(summary: dict) -> dict:
  """A recording's ``SUMMARY_COLUMNS`` values from ``files.track_file``'s summary."""
  ens, field, drift = summary["ensemble"], summary["field_ensemble"], summary["drift"]
  tissue, still = summary.get("tissue"), summary.get("background")
  return {
    "frames": int(summary["frames"]),
    "tracks": int(summary["tracks"]),
    "D_um2_s": float(ens["D_um2_s"]),
    "D_se_um2_s": float(ens["D_se_um2_s"]),
    "D_edge_um2_s": float(field["D_um2_s"]),
    "D_edge_se_um2_s": float(field["D_se_um2_s"]),
    "drift_subtracted": bool(drift["applied"]),
    "drift_x_px": float(drift["total_px"][0]),
    "drift_y_px": float(drift["total_px"][1]),
    "tissue_corrected": None if tissue is None else bool(tissue["applied"]),
    "tissue_rms_px": None if tissue is None else float(math.hypot(*tissue["rms_px"])),
    "background_flattened": None if still is None else bool(still["applied"]),
  }


def _empty_row(name: str, path: str) -> dict:
  return {column: None for column in SUMMARY_COLUMNS} | {"name": name, "path": path, "error": ""}


def _write_exports(task: Task, preset, summary: dict) -> None:
  outputs = task.outputs
  if "napari" not in outputs and "trackmate" not in outputs:
    return
  from qdjax.tracks import interop

  tracks = pd.read_csv(outputs["tracks"])
  if "napari" in outputs:
    interop.write_napari_csv(tracks, outputs["napari"])
  if "trackmate" in outputs:
    interop.write_trackmate_xml(
      tracks,
      outputs["trackmate"],
      pixel_size_um=float(preset.values["pixel_size_um"]),
      frame_interval_s=float(summary["frame_interval_s"]),
      image_path=task.path,
      image_shape=io.open_frames(task.path, movie=True).shape,
    )


def track_one(task: Task) -> tuple[dict, int, int]:
  """Tracks one recording and writes its outputs; never raises for a bad recording.

  Returns:
    its summary row (status 'done' or 'failed'), this process's id, and how many locators
    this process has built so far.
  """
  start = time.perf_counter()
  row = _empty_row(task.name, task.path)
  outputs = task.outputs
  settings_path = Path(outputs["settings"])
  try:
    # An old record must not vouch for outputs that this run may fail to replace.
    settings_path.unlink(missing_ok=True)
    preset = _restore_preset(task.preset)
    locate = _locator(task.spec, preset)
    summary = files.track_file(
      task.path,
      outputs["tracks"],
      outputs["diffusion"],
      locate,
      preset,
      plot_path=outputs.get("plot"),
      drift_path=outputs.get("drift"),
      tissue_path=outputs.get("tissue"),
      tissue_plot_path=outputs.get("tissue_plot"),
      progress=False,
      **task.track_options,
    )
    _write_exports(task, preset, summary)
    row.update(summary_row(summary), status="done")
    row["seconds"] = round(time.perf_counter() - start, 3)
    record = {"settings": task.settings, "input": input_record(Path(task.path)), "result": row}
    io.write_text(settings_path, json.dumps(record, indent=1, allow_nan=True) + "\n")
  except Exception as error:  # a bad recording is reported in its row; the others go on
    row.update(status="failed", error=one_line(error), bad_input=isinstance(error, BAD_INPUT))
    row["seconds"] = round(time.perf_counter() - start, 3)
  return row, os.getpid(), _LOADS[0]


def _previous_row(task: Task) -> dict | None:
  """The row of an earlier run with these settings on this input, if all its outputs exist."""
  if not all(Path(p).is_file() for p in task.outputs.values()):
    return None
  try:
    record = json.loads(Path(task.outputs["settings"]).read_text())
  except (OSError, ValueError):
    return None
  if not isinstance(record, dict) or record.get("settings") != task.settings:
    return None
  if record.get("input") != input_record(Path(task.path)):
    return None
  result = record.get("result")
  if not isinstance(result, dict) or result.get("status") != "done":
    return None
  return (
    _empty_row(task.name, task.path)
    | {k: v for k, v in result.items() if k in SUMMARY_COLUMNS}
    | {"status": "skipped", "error": ""}
  )


# --- many ------------------------------------------------------------------------------------


def _summary_table(rows: Sequence[dict]) -> pd.DataFrame:
  table = pd.DataFrame(list(rows), columns=SUMMARY_COLUMNS)
  table["error"] = table["error"].fillna("")
  for column in ("frames", "tracks"):  # integers, empty for a failed recording
    table[column] = pd.array(table[column], dtype="Int64")
  for column in SUMMARY_COLUMNS:
    if column.endswith(("_s", "_px")):
      table[column] = pd.to_numeric(table[column]).astype(float)
  return table


def write_summary(path, rows: Sequence[dict]) -> pd.DataFrame:
  """Writes ``rows`` as the summary CSV (atomically); returns them as a DataFrame."""
  table = _summary_table(rows)
  shown = table.copy()
  for column in SUMMARY_COLUMNS:
    if column.endswith(("_s", "_px")):  # 6 significant digits; empty where there is no value
      shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.6g}")
  io.write_csv(path, shown)
  return table


def _run_in_process(tasks, finished, progress):
  from tqdm.auto import tqdm

  try:
    for task in tqdm(tasks, desc="recordings", unit="movie", disable=not progress):
      finished(*track_one(task))
  finally:
    _close_locators()


def worker_env(single_threaded: bool = True) -> dict[str, str]:
  """Environment variables for a local worker process: ``WORKER_ENV`` (one thread each for
  XLA, BLAS and OpenMP), the caller's XLA_FLAGS kept; {} with ``single_threaded=False``."""
  if not single_threaded:
    return {}
  env = dict(WORKER_ENV)
  if os.environ.get("XLA_FLAGS"):
    env["XLA_FLAGS"] = os.environ["XLA_FLAGS"] + " " + env["XLA_FLAGS"]
  return env


@contextlib.contextmanager
def _quiet_distributed():
  """dask.distributed's scheduler and client log each worker's start and stop at INFO."""
  logger = logging.getLogger("distributed")
  level = logger.level
  logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
  try:
    yield
  finally:
    logger.setLevel(level)


def _distributed():
  try:
    import dask.distributed
  except ImportError:
    raise ImportError(
      "workers and scheduler need dask.distributed: pip install 'dask[distributed]'"
    ) from None
  return dask.distributed


@contextlib.contextmanager
def local_cluster(workers: int, single_threaded: bool = True):
  """A ``dask.distributed.LocalCluster`` of ``workers`` processes of one thread each, as
  ``track_many(workers=N)`` starts it; pass its ``scheduler_address`` as ``scheduler`` to
  reuse one cluster over several runs.

  Args:
    workers: worker processes.
    single_threaded: XLA, BLAS and OpenMP on one thread in each worker (``worker_env``).
  """
  distributed = _distributed()
  with _quiet_distributed():
    with _workers_ignore_ctrl_c():
      cluster = distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        # Not even ERROR: a worker busy in a movie when the run is stopped logs its failed
        # heartbeat to the closing scheduler with a traceback. A worker that dies is
        # reported by its future, in the movie's summary row.
        silence_logs=logging.CRITICAL,
        env=worker_env(single_threaded),
      )
    with cluster:
      yield cluster


@contextlib.contextmanager
def _workers_ignore_ctrl_c():
  """Processes started in this block ignore SIGINT: a terminal's Ctrl-C goes to the whole
  process group, and it is the caller's to handle (it then closes the cluster), not each
  worker's to die of with a traceback. An ignored signal stays ignored across exec, and
  Python then leaves it so."""
  if threading.current_thread() is not threading.main_thread():
    yield  # signal handlers can be set only from the main thread
    return
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)


def _run_on_dask(tasks, finished, progress, workers, scheduler):
  distributed = _distributed()
  from tqdm.auto import tqdm

  with contextlib.ExitStack() as stack:
    stack.enter_context(_quiet_distributed())
    if scheduler is None:
      scheduler = stack.enter_context(local_cluster(workers))
    client = stack.enter_context(distributed.Client(scheduler))
    futures = {client.submit(track_one, task, pure=False): task for task in tasks}
    bar = stack.enter_context(
      tqdm(total=len(futures), desc="recordings", unit="movie", disable=not progress)
    )
    for future in distributed.as_completed(futures):
      task = futures[future]
      try:
        result = future.result()
      except Exception as error:  # the worker died (killed, out of memory)
        row = _empty_row(task.name, task.path) | {"status": "failed", "error": one_line(error)}
        row["bad_input"] = False
        result = (row, None, 0)
      finished(*result)
      bar.update(1)


def output_paths(output_dir: Path, stem: str, *, plot=False, napari=False, trackmate=False):
  """What a recording named ``stem`` writes in ``output_dir`` (``OUTPUT_SUFFIXES``)."""
  names = ["tracks", "diffusion", "settings"]
  names += ["plot", "drift", "tissue", "tissue_plot"] if plot else []
  names += (["napari"] if napari else []) + (["trackmate"] if trackmate else [])
  return {name: str(output_dir / f"{stem}{OUTPUT_SUFFIXES[name]}") for name in names}


def track_many(
  inputs,
  output_dir: str | os.PathLike,
  locate_factory: Callable[[], locator.Locator] | None = None,
  *,
  method: str = "model",
  model: str | None = None,
  workdir: str | os.PathLike | None = None,
  preset="paper",
  workers: int | None = None,
  scheduler=None,
  overwrite: bool = False,
  plot: bool = False,
  napari: bool = False,
  trackmate: bool = False,
  progress: bool = True,
  **track_options,
) -> pd.DataFrame:
  """Tracks every recording ``inputs`` names into ``output_dir`` (module docstring).

  Args:
    inputs: movies: a file, folder, glob, list file or sequence (``expand_inputs``).
    output_dir: where the outputs go (made if missing).
    locate_factory: ``factory() -> qdjax.localize.locator.Locator``, called once per process
      (picklable for workers); default: ``locator.make(method, model=, workdir=)``. The
      settings file records a factory by its name: after changing what it builds, rerun
      with ``overwrite=True``.
    method, model, workdir: the locator, as ``locator.make`` takes them.
    preset: a ``presets.Preset``, or a preset name or file.
    workers: Dask worker processes on this machine (a ``LocalCluster``); None with no
      ``scheduler``: every recording in this process, one after another.
    scheduler: a running Dask scheduler's address (or a cluster object) to use instead.
    overwrite: track every recording again, even where matching outputs exist.
    plot: also write ``<stem>_tracks.png`` (quality report), ``<stem>_drift.csv``,
      ``<stem>_tissue.csv`` and ``<stem>_tissue.png``.
    napari: also write ``<stem>_napari.csv`` (``interop.write_napari_csv``).
    trackmate: also write ``<stem>_trackmate.xml`` (``interop.write_trackmate_xml``).
    progress: a progress bar over recordings.
    track_options: ``tracking.track_movie``'s keyword arguments (frame_interval_s, memory,
      min_detections, min_score, max_diffusion, window, drift, estimator, chunk, ...).

  Returns:
    one row per recording, in input order, with ``SUMMARY_COLUMNS`` (also written to
    ``<output_dir>/summary.csv``). ``attrs['locator_loads']``: locators built per
    process ({pid: count}) in this run; ``attrs['bad_input']``: for each failed recording,
    whether its input was at fault (``exit_code``).

  Raises:
    FileNotFoundError, ValueError: no movies, bad arguments or an unwritable output
      directory, before any work. A bad recording does not raise: its row says 'failed'.
  """
  if workers is not None and scheduler is not None:
    raise ValueError("give workers or scheduler, not both")
  if workers is not None and (isinstance(workers, bool) or int(workers) < 1):
    raise ValueError(f"workers must be a positive number, got {workers}")
  unknown = set(track_options) - set(_TRACK_OPTIONS)
  if unknown:
    raise ValueError(f"unknown track option(s): {', '.join(sorted(unknown))}")
  paths = expand_inputs(inputs)
  output_dir = io.check_output_dir(output_dir)
  if not isinstance(preset, presets.Preset):
    preset = presets.get(preset)
  spec = _spec(method, model, workdir, locate_factory)
  distributed = workers is not None or scheduler is not None
  jax_module = sys.modules.get("jax")
  cache = jax_module.config.jax_compilation_cache_dir if jax_module is not None else None
  spec = dataclasses.replace(
    spec, trackpy_workers=1 if distributed else None, compilation_cache=cache or None
  )
  settings = settings_record(spec, preset, track_options)
  output_dir.mkdir(parents=True, exist_ok=True)
  summary_path = output_dir / SUMMARY_FILE
  io.check_output_path(summary_path, inputs=paths)  # the directory is writable
  inputs = set(paths)  # resolved
  tasks = []
  for path in paths:
    outputs = output_paths(output_dir, path.stem, plot=plot, napari=napari, trackmate=trackmate)
    for output in outputs.values():
      if Path(output).is_dir():
        raise IsADirectoryError(f"output {output} is a directory")
      if Path(output).resolve() in inputs:
        raise ValueError(f"output {output} would overwrite an input movie")
    tasks.append(
      Task(
        name=path.stem,
        path=str(path),
        outputs=outputs,
        spec=spec,
        preset=_portable_preset(preset),
        settings=settings,
        track_options=dict(track_options),
      )
    )
  rows: dict[str, dict] = {}
  todo = []
  for task in tasks:
    previous = None if overwrite else _previous_row(task)
    if previous is None:
      todo.append(task)
    else:
      rows[task.name] = previous
  loads: dict[int, int] = {}
  order = [task.name for task in tasks]
  here, built_before = os.getpid(), _LOADS[0]  # workers may be threads of this process

  def finished(row, pid, count):
    rows[row["name"]] = row
    if pid is not None:
      loads[pid] = count - (built_before if pid == here else 0)
    write_summary(summary_path, [rows[name] for name in order if name in rows])

  if rows or not todo:
    write_summary(summary_path, [rows[name] for name in order if name in rows])
  if todo and distributed:
    _run_on_dask(todo, finished, progress, workers, scheduler)
  elif todo:
    _run_in_process(todo, finished, progress)
  table = _summary_table([rows[name] for name in order])
  table.attrs["locator_loads"] = loads
  table.attrs["bad_input"] = {
    name: bool(row.get("bad_input")) for name, row in rows.items() if row["status"] == "failed"
  }
  return table


_TRACK_OPTIONS = (
  "frame_interval_s",
  "max_diffusion",
  "memory",
  "min_detections",
  "chunk",
  "min_score",
  "window",
  "drift",
  "tissue",
  "background",
  "estimator",
  "motion_types",
)


def exit_code(summary: pd.DataFrame) -> int:
  """The command line's exit status for a run (``qdjax.cli``'s convention): 0 when no
  recording failed; 2 when those that failed were bad input (unreadable, wrong shape, no
  track found); 1 when any failed otherwise (a full disk, a dead worker, a bug)."""
  failed = summary.loc[summary["status"] == "failed", "name"]
  if failed.empty:
    return 0
  bad_input = summary.attrs.get("bad_input", {})
  return 2 if all(bad_input.get(name, False) for name in failed) else 1


def describe(summary: pd.DataFrame) -> str:
  """The summary as a table a user reads, then each failure's error on its own line."""
  shown = summary.drop(columns=["path", "error"]).copy()
  for column in ("D_um2_s", "D_se_um2_s", "D_edge_um2_s", "D_edge_se_um2_s"):
    shown[column] = shown[column].map(
      lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
    )
  for column in ("drift_x_px", "drift_y_px", "tissue_rms_px", "seconds"):
    shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
  for column in ("frames", "tracks"):
    shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else str(int(v)))
  for column in ("drift_subtracted", "tissue_corrected", "background_flattened"):
    shown[column] = shown[column].map(lambda v: "" if v is None or pd.isna(v) else str(v))
  lines = [shown.to_string(index=False)]
  counts = summary["status"].value_counts()
  lines.append(", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "skipped", "failed")))
  for _, row in summary[summary["status"] == "failed"].iterrows():
    lines.append(f"failed: {row['name']}: {row['error']}")
  return "\n".join(lines)
