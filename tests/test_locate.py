"""Reading user frames and the locate command line."""

import csv

import numpy as np
import pytest
import tifffile
from conftest import assert_one_line_error

from qdjax import cli, io
from qdjax.localize import files as locate_lib
from qdjax.sim import data, presets


@pytest.fixture(scope="module")
def frames():
  return data.generate(presets.get("paper").sim_params(regime=1, peak_photons=30.0), 6, seed=5)


def read_csv(path):
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  return rows


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".tif"])
def test_open_frames_reads_every_format(tmp_path, frames, suffix):
  path = tmp_path / f"stack{suffix}"
  images = frames["images"]
  if suffix == ".npy":
    np.save(path, images)
  elif suffix == ".npz":
    np.savez(path, images=images)
  else:
    tifffile.imwrite(path, images)
  loaded = io.open_frames(path)
  assert loaded.shape == images.shape
  np.testing.assert_array_equal(np.asarray(loaded), images)


def test_open_frames_single_frame_and_integer_tiff(tmp_path):
  path = tmp_path / "one.tif"
  tifffile.imwrite(path, np.arange(12, dtype=np.uint16).reshape(3, 4))
  loaded = io.open_frames(path)
  assert loaded.shape == (1, 3, 4)


@pytest.mark.parametrize(
  "make, needle",
  [
    (lambda p: np.save(p / "x.npy", np.zeros((2, 3, 4, 5))), "rank"),
    (lambda p: np.save(p / "x.npy", np.zeros(5)), "rank"),
    (lambda p: np.save(p / "x.npy", np.zeros((2, 0, 4))), "zero-size"),
    (lambda p: np.savez(p / "x.npz", frames=np.zeros((2, 3, 4))), "images"),
    (lambda p: (p / "x.npy").write_bytes(b"not numpy"), "cannot read"),
    (lambda p: (p / "x.png").write_bytes(b"png"), "unknown frame format"),
  ],
)
def test_open_frames_rejects_bad_files(tmp_path, make, needle):
  make(tmp_path)
  (path,) = tmp_path.iterdir()
  with pytest.raises(ValueError, match=needle):
    io.open_frames(path)


def test_open_frames_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such input"):
    io.open_frames(tmp_path / "nope.npy")


def test_nan_pixels_are_reported_by_frame(tmp_path):
  images = np.ones((5, 4, 4), np.float32)
  images[3, 1, 2] = np.nan
  with pytest.raises(ValueError, match="frame 3"):
    list(io.iter_chunks(images, 2))


class FakeLocator:
  """A locator with known output, its detections deliberately not in score order: the
  brightest pixel (score = its value), a weak one at the origin (score -1), and a middling
  one at the opposite corner (score = half the value)."""

  def __init__(self):
    self.calls = []

  def __call__(self, images, progress=None):
    self.calls.append(len(images))
    out = []
    for image in images:
      r, c = np.unravel_index(np.argmax(image), image.shape)
      h, w = image.shape
      value = image[r, c]
      out.append(np.array([[0.0, 0.0, -1.0], [c, r, value], [w - 1, h - 1, value / 2]]))
    if progress is not None:
      progress.update(len(images))
    return out


def test_locate_file_streams_in_bounded_chunks_and_sorts(tmp_path):
  images = np.zeros((10, 5, 7), np.float32)
  for i in range(10):
    images[i, i % 5, (2 * i) % 7] = 10 + i
  np.save(tmp_path / "s.npy", images)
  locator = FakeLocator()
  n = locate_lib.locate_file(
    str(tmp_path / "s.npy"),
    str(tmp_path / "o.csv"),
    locator,
    chunk=3,
    progress=False,
  )
  assert n == 10 and locator.calls == [3, 3, 3, 1]
  rows = read_csv(tmp_path / "o.csv")
  # Sorted by frame, then by descending score within the frame; each row of its frame.
  assert [int(r["frame"]) for r in rows] == [i for i in range(10) for _ in range(3)]
  for i in range(10):
    own = [(float(r["x"]), float(r["y"]), float(r["score"])) for r in rows[3 * i : 3 * i + 3]]
    assert own == [((2 * i) % 7, i % 5, 10 + i), (6, 4, (10 + i) / 2), (0, 0, -1)]
  # min_score drops the -1s and keeps the order.
  locate_lib.locate_file(
    str(tmp_path / "s.npy"),
    str(tmp_path / "o.csv"),
    locator,
    chunk=3,
    min_score=0.0,
    progress=False,
  )
  rows = read_csv(tmp_path / "o.csv")
  assert [int(r["frame"]) for r in rows] == [i for i in range(10) for _ in range(2)]
  assert [float(r["score"]) for r in rows[:2]] == [10.0, 5.0]


def test_locate_file_keeps_previous_output_on_bad_input(tmp_path):
  images = np.ones((4, 5, 5), np.float32)
  images[2, 0, 0] = np.inf
  np.save(tmp_path / "s.npy", images)
  (tmp_path / "o.csv").write_text("precious")
  with pytest.raises(ValueError, match="frame 2"):
    locate_lib.locate_file(
      str(tmp_path / "s.npy"), str(tmp_path / "o.csv"), FakeLocator(), chunk=2, progress=False
    )
  assert (tmp_path / "o.csv").read_text() == "precious"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["o.csv", "s.npy"]


def test_locate_script_trackpy_npy_and_tif_agree(tmp_path, frames, script):
  np.save(tmp_path / "f.npy", frames["images"])
  tifffile.imwrite(tmp_path / "f.tif", frames["images"])
  outputs = []
  for name in ("f.npy", "f.tif"):
    out = tmp_path / (name + ".csv")
    result = script(
      "locate.py", "--method=trackpy", f"--input={tmp_path / name}", f"--output={out}", "--plot"
    )
    assert result.returncode == 0, result.stderr
    outputs.append(read_csv(out))
  assert outputs[0] == outputs[1] and len(outputs[0]) >= 6
  # Bright QDs: the best detection of each frame is near the truth.
  for i in range(6):
    best = [r for r in outputs[0] if int(r["frame"]) == i][0]
    truth = frames["keypoints"][i, 0]
    assert np.hypot(float(best["x"]) - truth[0], float(best["y"]) - truth[1]) < 2.0
  assert (tmp_path / "f.npy.png").exists()


@pytest.mark.parametrize(
  "args, needle",
  [
    (["--input=/nonexistent/x.npy"], "no such input"),
    (["--input={bad_rank}"], "rank"),
    (["--input={nan}"], "NaN"),
    (["--input={nan}", "--method=nope"], "method"),
    (["--input={nan}", "--method=mle", "--workdir=/tmp"], "workdir"),
  ],
)
def test_locate_script_bad_input(tmp_path, script, args, needle):
  np.save(tmp_path / "bad_rank.npy", np.zeros((2, 2, 2, 2), np.float32))
  nan = np.ones((2, 6, 6), np.float32)
  nan[1, 2, 2] = np.nan
  np.save(tmp_path / "nan.npy", nan)
  args = [a.format(bad_rank=tmp_path / "bad_rank.npy", nan=tmp_path / "nan.npy") for a in args]
  result = script("locate.py", "--method=trackpy", *args, f"--output={tmp_path / 'o.csv'}")
  assert_one_line_error(result, needle)
  assert not (tmp_path / "o.csv").exists()


def test_compilation_cache_directory_follows_its_variable(monkeypatch, tmp_path):
  monkeypatch.delenv(cli.CACHE_ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert cli.compilation_cache_dir() == tmp_path / "qdjax" / "jax"
  for off in ("0", "off", "False", "no"):
    monkeypatch.setenv(cli.CACHE_ENV, off)
    assert cli.compilation_cache_dir() is None
  monkeypatch.setenv(cli.CACHE_ENV, str(tmp_path / "mine"))
  assert cli.compilation_cache_dir() == tmp_path / "mine"


def test_a_second_locate_call_reads_its_programs_from_the_cache(tmp_path, frames, script):
  """The first call stores its compiled programs; the second finds every one of them (a
  miss would compile and store it again, rewriting its file) and writes the same CSV."""
  np.save(tmp_path / "f.npy", frames["images"][:2])
  cache = tmp_path / "cache"
  env = {cli.CACHE_ENV: str(cache)}
  args = [f"--input={tmp_path / 'f.npy'}", "--model=paper_fast", "--min_score=0.01"]
  first = script("locate.py", *args, f"--output={tmp_path / 'a.csv'}", env=env)
  assert first.returncode == 0, first.stderr
  stored = {p.name: p.stat().st_mtime_ns for p in cache.glob("*-cache")}
  assert any(name.startswith("jit_run") for name in stored), sorted(stored)
  second = script("locate.py", *args, f"--output={tmp_path / 'b.csv'}", env=env)
  assert second.returncode == 0, second.stderr
  assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*-cache")} == stored
  assert read_csv(tmp_path / "a.csv") == read_csv(tmp_path / "b.csv")
  assert read_csv(tmp_path / "a.csv")
