"""Data safety and signals of the command lines: no input is ever written over, an output
that cannot be written fails before any work, and every refusal is one line."""

import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import assert_one_line_error, run_script


def digest(path):
  return hashlib.sha256(path.read_bytes()).hexdigest()


PROGRESS_BAR = re.compile(r"^[\w ]+:\s+\d+%\|")  # tqdm's line, redrawn after each \r


def assert_only_line(result, *needles, code):
  """One line on stderr besides progress bars, ``error: ...`` naming every needle, and the
  exit code."""
  assert_one_line_error(result, *needles, code=code)
  lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not PROGRESS_BAR.match(ln)]
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


@pytest.fixture
def fit_inputs(tmp_path):
  import tifffile

  frames = np.random.default_rng(0).poisson(2.0, (4, 24, 25)).astype(np.float32)
  tif = tmp_path / "f.tif"
  tifffile.imwrite(tif, frames)
  pmt = tmp_path / "pmt.json"
  pmt.write_text('{"alpha": 0.44, "dark_sigma": 8.1, "offset": -2.74}')
  (tmp_path / "link.tif").symlink_to(tif)
  return tif, pmt, {p: digest(p) for p in (tif, pmt)}


@pytest.mark.parametrize("output", ["f.tif", "pmt.json", "link.tif"])
def test_fit_microscope_never_writes_over_an_input(fit_inputs, output):
  tif, pmt, digests = fit_inputs
  folder = tif.parent
  before = sorted(folder.iterdir())
  result = run_script(
    "fit_microscope.py", f"--input={tif}", f"--pmt={pmt}", f"--output={folder / output}"
  )
  assert_only_line(result, "would overwrite", code=2)
  for file, hashed in digests.items():
    assert digest(file) == hashed, file
  assert sorted(folder.iterdir()) == before


def test_fit_microscope_bad_flag_is_one_line(fit_inputs):
  tif, _, _ = fit_inputs
  result = run_script(
    "fit_microscope.py", f"--input={tif}", f"--output={tif.parent / 'o.json'}", "--config.bogus=1"
  )
  assert_only_line(result, "config.bogus", code=2)


@pytest.fixture
def read_only_dir(tmp_path):
  """A directory in which nothing can be made, root included (immutable where root)."""
  folder = tmp_path / "ro"
  folder.mkdir()
  folder.chmod(0o555)
  immutable = os.geteuid() == 0 and (
    subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
  )
  try:
    try:
      (folder / "probe").touch()
    except OSError:
      pass
    else:
      pytest.skip("cannot make a read-only directory here")
    yield folder
  finally:
    if immutable:
      subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def _write_inputs(folder):
  frames = np.random.default_rng(0).poisson(2.0, (4, 24, 25)).astype(np.float32)
  np.save(folder / "in.npy", frames)
  (folder / "pmt.json").write_text('{"alpha": 0.44, "dark_sigma": 8.1, "offset": -2.74}')


READ_ONLY_CASES = [
  ("simulate.py", "--regime=1", "--num_images=2", "--output={ro}/x.npz"),
  ("simulate.py", "--regime=1", "--num_frames=3", "--output={ro}/x.tif"),
  ("locate.py", "--method=trackpy", "--input={inp}/in.npy", "--output={ro}/l.csv"),
  (
    "track.py",
    "--method=trackpy",
    "--input={inp}/in.npy",
    "--output={ro}/t.csv",
    "--diffusion_output={inp}/d.csv",
  ),
  ("fit_microscope.py", "--input={inp}/in.npy", "--output={ro}/m.json"),
  ("calibrate_pmt.py", "--input={inp}/in.npy", "--output={ro}/p.json"),
  ("calibrate.py", "--output={ro}/c.json"),
  ("evaluate.py", "--output_dir={ro}/ev"),
  ("evaluate.py", "--output_dir={ro}"),
  ("reproduction.py", "--output_dir={ro}/rep"),
  ("train.py", "--workdir={ro}/w"),
  ("export_tfds.py", "--data_dir={ro}/tfds"),
  ("figures.py", "--output={ro}/f.png"),
  ("bench.py", "--what=simulate", "--quick", "--output={ro}/b.json"),
]


@pytest.mark.parametrize("case", READ_ONLY_CASES, ids=lambda case: " ".join(case[:2]))
def test_an_output_in_a_read_only_directory_fails_before_any_work(read_only_dir, case):
  script, *args = case
  inputs = read_only_dir.parent
  _write_inputs(inputs)
  before = sorted(inputs.iterdir())
  start = time.monotonic()
  result = run_script(script, *(a.format(ro=read_only_dir, inp=inputs) for a in args))
  assert_only_line(result, "not writable", str(read_only_dir), code=2)
  assert time.monotonic() - start < 60, "the check came after the work"
  assert not list(read_only_dir.iterdir())
  assert sorted(inputs.iterdir()) == before


def test_simulate_leaves_no_movie_when_its_truth_cannot_be_written(tmp_path):
  (tmp_path / "m_truth.csv").mkdir()  # the truth's name is taken by a directory
  result = run_script(
    "simulate.py", "--regime=1", "--num_frames=3", f"--output={tmp_path / 'm.tif'}"
  )
  assert_only_line(result, "m_truth.csv", "is a directory", code=2)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["m_truth.csv"]


def test_a_second_run_from_the_compilation_cache_prints_nothing_more(tmp_path):
  cache = tmp_path / "cache"
  env = {"QDJAX_COMPILATION_CACHE": str(cache)}
  args = ["--regime=1", "--num_images=2", f"--output={tmp_path / 'x.npz'}"]
  first = run_script("simulate.py", *args, env=env)
  assert first.returncode == 0, first.stderr
  assert any(cache.glob("*-cache"))  # programs were kept
  second = run_script("simulate.py", *args, env=env)
  assert second.returncode == 0, second.stderr
  assert "cpu_aot_loader" not in second.stderr and "SIGILL" not in second.stderr, second.stderr
  assert len(second.stderr.splitlines()) <= len(first.stderr.splitlines()), second.stderr


@pytest.fixture
def rgb_tif(tmp_path):
  import tifffile

  image = np.random.default_rng(2).poisson(3.0, (64, 64, 3)).astype(np.uint8)
  path = tmp_path / "rgb.tif"
  tifffile.imwrite(path, image, photometric="rgb")
  return path


def test_locate_refuses_an_rgb_image_unless_told_its_layout(rgb_tif):
  output = rgb_tif.parent / "locs.csv"
  args = ["--method=trackpy", f"--input={rgb_tif}", f"--output={output}"]
  result = run_script("locate.py", *args)
  assert_only_line(result, str(rgb_tif), "ambiguous", "(64, 64, 3)", "--layout", code=2)
  assert not output.exists()
  for layout, frames in (("channels", 3), ("stack", 64)):
    result = run_script("locate.py", *args, f"--layout={layout}")
    assert result.returncode == 0, result.stderr
    assert f"located {frames} frames" in result.stdout, result.stdout


def test_a_nan_pixel_is_named_with_its_file_frame_and_pixel(tmp_path):
  frames = np.random.default_rng(3).poisson(3.0, (6, 24, 25)).astype(np.float32)
  frames[4, 5, 7] = np.nan
  path = tmp_path / "registered.npy"
  np.save(path, frames)
  output = tmp_path / "locs.csv"
  result = run_script(
    "locate.py", "--method=trackpy", f"--input={path}", f"--output={output}", "--chunk=2"
  )
  assert_only_line(result, str(path), "frame 4", "row 5, column 7", "is NaN", code=2)
  assert not output.exists()


def _descendants(pid: int) -> list[int]:
  try:
    import psutil
  except ImportError:
    psutil = None
  if psutil is not None:
    try:
      return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
      return []
  parents = {}
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
      except (OSError, IndexError, ValueError):
        pass
  found, frontier = [], [pid]
  while frontier:
    children = [p for p, parent in parents.items() if parent in frontier]
    found += children
    frontier = children
  return found


def _alive(pid: int) -> bool:
  """Running (not gone, not a zombie waiting for a parent that no longer reaps it)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


@pytest.fixture(scope="module")
def long_stack(tmp_path_factory):
  """Enough 24 x 25 frames for trackpy's worker pool to work well over 10 s on 2 cores."""
  if len(os.sched_getaffinity(0)) < 2:
    pytest.skip("trackpy runs without a worker pool on one core")
  path = tmp_path_factory.mktemp("long") / "long.npy"
  np.save(path, np.random.default_rng(4).poisson(3.0, (30000, 24, 25)).astype(np.float32))
  return path


def _start_trackpy_locate(stack, output):
  """Starts locate.py --method=trackpy; returns (process, stderr lines, reader, workers)
  once its worker pool has started working."""
  import threading

  from conftest import REPO, _script_env

  proc = subprocess.Popen(
    [sys.executable, str(REPO / "experiments" / "locate.py"), "--method=trackpy"]
    + [f"--input={stack}", f"--output={output}"],
    env=_script_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  lines = []
  reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")))
  reader.start()
  deadline = time.monotonic() + 300
  try:
    while True:
      assert proc.poll() is None, "".join(lines)
      assert time.monotonic() < deadline, "".join(lines)
      workers = _descendants(proc.pid)
      if len(workers) >= 2 and "locate:" in "".join(lines):
        break
      time.sleep(0.1)
    time.sleep(2.0)  # the workers have imported trackpy and are locating
    assert proc.poll() is None, "".join(lines)
    return proc, lines, reader, _descendants(proc.pid)
  except BaseException:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    raise


@pytest.mark.parametrize(
  "signum, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_a_signal_stops_trackpy_locate_and_its_workers(long_stack, tmp_path, signum, code, word):
  output = tmp_path / "locs.csv"
  proc, lines, reader, workers = _start_trackpy_locate(long_stack, output)
  sent = time.monotonic()
  if signum == signal.SIGINT:
    os.killpg(proc.pid, signum)  # Ctrl-C in a terminal: the whole process group
  else:
    os.kill(proc.pid, signum)  # kill PID: the parent alone
  try:
    proc.wait(timeout=10)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    pytest.fail(f"still running 10 s after signal {signum}")
  reader.join()
  took = time.monotonic() - sent
  result = subprocess.CompletedProcess(
    proc.args, proc.returncode, proc.stdout.read(), "".join(lines)
  )
  assert_only_line(result, word, code=code)
  assert took < 10, took
  assert not output.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
  _assert_all_gone(workers)


def _assert_all_gone(pids, seconds=5.0):
  deadline = time.monotonic() + seconds
  while [pid for pid in pids if _alive(pid)] and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not [pid for pid in pids if _alive(pid)], pids


def test_workers_die_when_their_parent_is_killed(long_stack, tmp_path):
  proc, _, reader, workers = _start_trackpy_locate(long_stack, tmp_path / "locs.csv")
  os.kill(proc.pid, signal.SIGKILL)  # no handler runs: the workers must notice by themselves
  proc.wait()
  reader.join()
  _assert_all_gone(workers)


def test_sigterm_during_simulate_exits_143_and_writes_nothing(tmp_path):
  from conftest import interrupt_script

  result = interrupt_script(
    "simulate.py",
    "--regime=1",
    "--num_images=200000",
    f"--output={tmp_path / 'frames.npz'}",
    started=lambda err: "simulate:" in err,
    signum=signal.SIGTERM,
    timeout=300,
  )
  assert_only_line(result, "terminated", code=143)
  assert not list(tmp_path.iterdir())


def test_a_movie_is_the_same_in_any_pieces_and_written_piece_by_piece(tmp_path):
  import tifffile

  from qdjax.sim import movie, presets

  frame = presets.get("paper").sim_params(diffusion=0.5, height=32, width=40, num_particles=(2, 4))
  params = movie.make_params(frame, 37, blink_on_s=0.02, blink_off_s=0.01)
  whole = movie.generate(params, 3)
  for chunk in (5, 37):  # several pieces, the last one short; and one piece
    pieces = list(movie.iter_frames(params, 3, chunk))
    assert len(pieces) == -(-37 // chunk)
    for name in ("images", "expected", "keypoints", "centroids", "present", "z", "on_fraction"):
      joined = np.concatenate([piece[name] for piece in pieces])
      np.testing.assert_array_equal(joined, whole[name], err_msg=f"{name}, chunk {chunk}")
  record = movie.params_record(params)
  movie.save(str(tmp_path / "whole.npz"), whole, record)
  movie.write(str(tmp_path / "pieces.npz"), params, 3, record, chunk=5)
  with np.load(tmp_path / "whole.npz") as a, np.load(tmp_path / "pieces.npz") as b:
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  movie.save(str(tmp_path / "whole.tif"), whole, record)
  movie.write(str(tmp_path / "pieces.tif"), params, 3, record, chunk=5)
  np.testing.assert_array_equal(
    tifffile.imread(tmp_path / "pieces.tif"), tifffile.imread(tmp_path / "whole.tif")
  )
  for suffix in ("_truth.csv", "_params.json"):
    assert (tmp_path / f"pieces{suffix}").read_text() == (tmp_path / f"whole{suffix}").read_text()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
