"""Many movies in one run (qdjax.tracks.batch, track.py --output_dir), and tracks for napari and
TrackMate (qdjax.tracks.interop)."""

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
import test_track
import tifffile
from conftest import assert_one_line_error, interrupt_script, run_script

from qdjax.localize import locator
from qdjax.sim import presets
from qdjax.tracks import batch, interop, tracking

TRACKPY = ["--method=trackpy", "--window=6"]


def write_movie(path, seed=5):
  """Two bright Gaussian spots diffusing on Poisson noise, 16 frames (``test_track``'s)."""
  return test_track.write_movie(path, n_frames=16, seed=seed)


def movie_folder(folder, suffixes=(".npy", ".tif", ".npy")):
  folder.mkdir(parents=True, exist_ok=True)
  for i, suffix in enumerate(suffixes):
    write_movie(folder / f"movie{i}{suffix}", seed=i)
  return folder


@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory):
  """track.py on a folder of three movies with --workers=2, and its outputs."""
  root = tmp_path_factory.mktemp("batch")
  movies = movie_folder(root / "movies")
  out = root / "out"
  args = [f"--input={movies}", f"--output_dir={out}", *TRACKPY, "--napari", "--trackmate"]
  result = run_script("track.py", *args, "--workers=2")
  return root, movies, out, args, result


def test_two_workers_track_every_movie_as_one_movie_runs_do(two_worker_run):
  root, movies, out, _, result = two_worker_run
  assert result.returncode == 0, result.stderr[-3000:]
  summary = pd.read_csv(out / "summary.csv")
  assert list(summary.columns) == batch.SUMMARY_COLUMNS
  assert list(summary["name"]) == ["movie0", "movie1", "movie2"]
  assert (summary["status"] == "done").all() and summary["error"].isna().all()
  assert (summary["frames"] == 16).all() and (summary["tracks"] == 2).all()
  for name in summary["name"]:
    for suffix in ("_tracks.csv", "_diffusion.csv", "_settings.json", "_napari.csv"):
      assert (out / f"{name}{suffix}").is_file(), name + suffix
  assert "3 done, 0 skipped, 0 failed" in result.stdout
  # Each movie's D is what tracking it alone gives (same locator and options).
  preset = presets.get("paper")
  locate = locator.make("trackpy", preset=preset)
  for row in summary.itertuples():
    alone = tracking.track_movie(np.load(row.path) if row.path.endswith(".npy") else
                                 tifffile.imread(row.path), locate, preset, window=6)  # fmt: skip
    assert row.D_um2_s == pytest.approx(alone.summary["ensemble"]["D_um2_s"], rel=1e-5)
    assert row.D_se_um2_s == pytest.approx(alone.summary["ensemble"]["D_se_um2_s"], rel=1e-5)
    assert row.D_edge_um2_s == pytest.approx(alone.summary["field_ensemble"]["D_um2_s"], rel=1e-5)
  # ... and the files are those of a one-movie track.py run, byte for byte.
  one = root / "one"
  one.mkdir()
  single = run_script(
    "track.py",
    f"--input={movies / 'movie1.tif'}",
    f"--output={one / 't.csv'}",
    f"--diffusion_output={one / 'd.csv'}",
    *TRACKPY,
  )
  assert single.returncode == 0, single.stderr[-3000:]
  assert (one / "t.csv").read_text() == (out / "movie1_tracks.csv").read_text()
  assert (one / "d.csv").read_text() == (out / "movie1_diffusion.csv").read_text()
  settings = json.loads((out / "movie1_settings.json").read_text())
  assert settings["settings"]["locator"]["method"] == "trackpy"
  assert settings["settings"]["preset"]["preset"] == "paper"
  assert settings["settings"]["track_options"]["window"] == 6
  assert settings["input"]["size"] == (movies / "movie1.tif").stat().st_size


def test_a_rerun_skips_what_is_done_and_a_corrupt_movie_fails_alone(two_worker_run):
  root, movies, out, args, first = two_worker_run
  assert first.returncode == 0, first.stderr[-3000:]
  before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "summary.csv"}
  start = time.monotonic()
  again = run_script("track.py", *args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert time.monotonic() - start < 60
  summary = pd.read_csv(out / "summary.csv")
  assert (summary["status"] == "skipped").all(), summary
  assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in before} == before
  first_rows = summary.drop(columns=["status", "error"])
  # A corrupt movie among them: its row has the error, the others are complete, exit 2.
  (movies / "broken.npy").write_bytes(b"not a movie")
  broken = run_script("track.py", *args)
  assert broken.returncode == 2, broken.stderr[-3000:]
  assert "Traceback" not in broken.stderr
  summary = pd.read_csv(out / "summary.csv").set_index("name")
  assert summary.loc["broken", "status"] == "failed"
  assert "broken.npy" in summary.loc["broken", "error"]
  assert "cannot read frames" in summary.loc["broken", "error"]
  good = summary.drop(index="broken").reset_index()
  assert (good["status"] == "skipped").all()
  pd.testing.assert_frame_equal(
    good.drop(columns=["status", "error"]), first_rows, check_dtype=False
  )
  assert "failed: broken:" in broken.stdout
  assert not (out / "broken_tracks.csv").exists()
  (movies / "broken.npy").unlink()


def test_ctrl_c_stops_the_workers_in_one_line_and_keeps_what_is_done(tmp_path):
  from benchmarks import batch as bench

  movies = tmp_path / "movies"
  bench.write_movies(movies, count=6, frames=200, size=64, qds=6)
  out = tmp_path / "out"
  args = [f"--input={movies}", f"--output_dir={out}", "--method=trackpy", "--workers=2"]
  result = interrupt_script("track.py", *args, started=lambda err: "recordings:" in err)
  assert_one_line_error(result, "interrupted", code=130)
  # Whatever finished is complete (a rerun skips it); nothing is half written.
  done = {p.name.removesuffix("_settings.json") for p in out.glob("*_settings.json")}
  for name in done:
    assert (out / f"{name}_tracks.csv").is_file() and (out / f"{name}_diffusion.csv").is_file()
  assert not list(out.glob(".*.tmp*"))


def test_single_movie_flags_and_batch_flags_do_not_mix(tmp_path):
  movies = movie_folder(tmp_path / "movies", (".npy", ".npy"))
  result = run_script("track.py", f"--input={movies}", f"--output={tmp_path / 't.csv'}")
  assert_one_line_error(result, "2 movies", "--output_dir", code=2)
  result = run_script(
    "track.py", f"--input={movies / 'movie0.npy'}", "--output_dir=x", "--output=t.csv"
  )
  assert_one_line_error(result, "not both", code=2)
  result = run_script("track.py", f"--input={tmp_path / 'nothing*.tif'}", "--output_dir=x")
  assert_one_line_error(result, "no movies", code=2)


def test_what_track_py_imports_loads_no_jax():
  """A run refused for its flags or inputs exits before any JAX is loaded (in a fraction of
  a second): the tracking modules import the simulator and the registration where they use
  them."""
  code = (
    "import sys; import qdjax.tracks.batch, qdjax.tracks.tracking, qdjax.tracks.diffusion; "
    "import qdjax.localize.locator, qdjax.sim.presets, qdjax.detect.shipped; "
    "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if m.startswith('jax'))"
  )
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


def test_expand_inputs_reads_folders_globs_and_list_files(tmp_path):
  movies = movie_folder(tmp_path / "a", (".npy", ".tif"))
  (movies / "notes.txt").write_text("not a movie")
  other = tmp_path / "b"
  other.mkdir()
  write_movie(other / "late.npy", seed=3)
  expected = [movies / "movie0.npy", movies / "movie1.tif"]
  assert batch.expand_inputs(movies) == [p.resolve() for p in expected]
  assert batch.expand_inputs(str(tmp_path / "*" / "*.npy")) == [
    (movies / "movie0.npy").resolve(),
    (other / "late.npy").resolve(),
  ]
  listing = tmp_path / "list.txt"
  listing.write_text("# the movies\n\na/movie1.tif\nb\n  a/movie1.tif  \n")
  assert batch.expand_inputs(listing) == [
    (movies / "movie1.tif").resolve(),
    (other / "late.npy").resolve(),
  ]
  assert batch.expand_inputs([movies / "movie0.npy", other]) == [
    (movies / "movie0.npy").resolve(),
    (other / "late.npy").resolve(),
  ]
  write_movie(other / "movie0.tif", seed=4)
  with pytest.raises(ValueError, match="two movies named 'movie0'"):
    batch.expand_inputs(str(tmp_path / "*" / "movie0.*"))
  with pytest.raises(FileNotFoundError, match="no such input"):
    batch.expand_inputs(tmp_path / "missing.tif")
  with pytest.raises(ValueError, match="no movies"):
    batch.expand_inputs(str(tmp_path / "*.tiff"))


def test_the_locator_is_built_once_and_changed_settings_track_again(tmp_path):
  movies = movie_folder(tmp_path / "movies")
  out = tmp_path / "out"
  built = []

  def factory():
    built.append(1)
    return locator.make("trackpy", workers=1)

  first = batch.track_many(movies, out, factory, preset="paper", progress=False, window=6)
  assert list(first["status"]) == ["done"] * 3 and len(built) == 1
  assert first.attrs["locator_loads"] == {os.getpid(): 1}
  assert batch.exit_code(first) == 0
  same = batch.track_many(movies, out, factory, preset="paper", progress=False, window=6)
  assert list(same["status"]) == ["skipped"] * 3 and len(built) == 1
  pd.testing.assert_frame_equal(same.drop(columns="status"), first.drop(columns="status"))
  # Another option, a changed input or overwrite: tracked again.
  other = batch.track_many(movies, out, factory, preset="paper", progress=False, window=7)
  assert list(other["status"]) == ["done"] * 3
  os.utime(movies / "movie1.tif", ns=(1, 1))
  touched = batch.track_many(movies, out, factory, preset="paper", progress=False, window=7)
  assert list(touched["status"]) == ["skipped", "done", "skipped"]
  forced = batch.track_many(
    movies, out, factory, preset="paper", progress=False, window=7, overwrite=True
  )
  assert list(forced["status"]) == ["done"] * 3
  # A movie with no track fails alone; its settings file is gone, so a rerun tries it again.
  np.save(movies / "movie2.npy", np.ones((16, 32, 32), np.float32))
  failed = batch.track_many(movies, out, factory, preset="paper", progress=False, window=7)
  assert list(failed["status"]) == ["skipped", "skipped", "failed"]
  assert "no track" in failed["error"].iloc[2] and batch.exit_code(failed) == 2
  assert not (out / "movie2_settings.json").exists()
  with pytest.raises(ValueError, match="unknown track option"):
    batch.track_many(movies, out, factory, progress=False, windows=7)


def test_a_dask_worker_builds_the_locator_once(tmp_path):
  from dask.distributed import LocalCluster

  movies = movie_folder(tmp_path / "movies", (".npy",) * 4)
  # A worker in this process (no process to start): scheduler= and the worker's cache.
  with LocalCluster(
    n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
  ) as cluster:
    summary = batch.track_many(
      movies,
      tmp_path / "out",
      method="trackpy",
      preset="paper",
      scheduler=cluster.scheduler_address,
      progress=False,
    )
  assert list(summary["status"]) == ["done"] * 4, summary["error"]
  assert summary.attrs["locator_loads"] == {os.getpid(): 1}


# TrackMate's own names (fiji.plugin.trackmate.io.TmXmlKeys, and the feature keys its reader
# TmXmlReader looks up: TRACK_ID, SPOT_SOURCE_ID, SPOT_TARGET_ID): every element of a
# TrackMate file and the attributes TrackMate reads from it, as in its example files.
TRACKMATE_ELEMENTS = {
  "TrackMate": {"version"},
  "Log": set(),
  "Model": {"spatialunits", "timeunits"},
  "FeatureDeclarations": set(),
  "SpotFeatures": set(),
  "EdgeFeatures": set(),
  "TrackFeatures": set(),
  "Feature": {"feature", "name", "shortname", "dimension", "isint"},
  "AllSpots": {"nspots"},
  "SpotsInFrame": {"frame"},
  "Spot": {"ID", "name"},
  "AllTracks": set(),
  "Track": {"name", "TRACK_ID"},
  "Edge": {"SPOT_SOURCE_ID", "SPOT_TARGET_ID"},
  "FilteredTracks": set(),
  "TrackID": {"TRACK_ID"},
  "Settings": set(),
  "ImageData": {
    "filename", "folder", "width", "height", "nslices", "nframes", "pixelwidth",
    "pixelheight", "voxeldepth", "timeinterval",
  },
  "BasicSettings": {"xstart", "xend", "ystart", "yend", "zstart", "zend", "tstart", "tend"},
  "DetectorSettings": {"DETECTOR_NAME"},
  "InitialSpotFilter": {"feature", "value", "isabove"},
  "SpotFilterCollection": set(),
  "TrackerSettings": {"TRACKER_NAME"},
  "TrackFilterCollection": set(),
  "AnalyzerCollection": set(),
  "SpotAnalyzers": set(),
  "EdgeAnalyzers": set(),
  "TrackAnalyzers": set(),
  "GUIState": {"state"},
}  # fmt: skip
TRACKMATE_PATHS = [
  "Model/FeatureDeclarations/SpotFeatures",
  "Model/FeatureDeclarations/EdgeFeatures",
  "Model/FeatureDeclarations/TrackFeatures",
  "Model/AllSpots/SpotsInFrame/Spot",
  "Model/AllTracks/Track/Edge",
  "Model/FilteredTracks/TrackID",
  "Settings/ImageData",
  "Settings/BasicSettings",
  "Settings/InitialSpotFilter",  # TrackMate's reader needs these three (it does not check)
  "Settings/SpotFilterCollection",
  "Settings/TrackFilterCollection",
  "Settings/AnalyzerCollection/TrackAnalyzers",
]
# Values of TrackMate's Dimension enum (a feature's dimension is read with valueOf).
TRACKMATE_DIMENSIONS = {"NONE", "QUALITY", "COST", "INTENSITY", "INTENSITY_SQUARED", "POSITION",
                        "VELOCITY", "LENGTH", "AREA", "VOLUME", "TIME", "ANGLE", "RATE",
                        "ANGLE_RATE", "STRING"}  # fmt: skip


def example_tracks():
  """Two tracks, one with a missed frame, and a third of one detection."""
  return pd.DataFrame(
    {
      "frame": [0, 1, 3, 4, 0, 1, 2, 5],
      "x": [1.5, 2.25, 3.0, 3.5, 10.0, 10.5, 11.0, 20.0],
      "y": [4.0, 4.5, 5.0, 5.25, 12.0, 12.5, 13.0, 1.0],
      "score": [10.0, 11.0, 12.0, 13.0, 5.0, 6.0, 7.0, 8.0],
      "particle": [3, 3, 3, 3, 7, 7, 7, 9],
    }
  )


def test_trackmate_xml_has_trackmates_structure_and_reads_back(tmp_path):
  tracks = example_tracks()
  path = tmp_path / "movie_trackmate.xml"
  interop.write_trackmate_xml(
    tracks, path, pixel_size_um=0.2, frame_interval_s=0.05, image_path=tmp_path / "movie.tif",
    image_shape=(6, 24, 25),
  )  # fmt: skip
  assert path.read_bytes().startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
  root = ET.parse(path).getroot()
  assert root.tag == "TrackMate"
  for element in root.iter():
    assert element.tag in TRACKMATE_ELEMENTS, element.tag
    assert TRACKMATE_ELEMENTS[element.tag] <= set(element.attrib), element.tag
  for xpath in TRACKMATE_PATHS:
    assert root.find(xpath) is not None, xpath
  model = root.find("Model")
  declared = {
    kind: {f.get("feature") for f in model.iterfind(f"FeatureDeclarations/{kind}/Feature")}
    for kind in ("SpotFeatures", "EdgeFeatures", "TrackFeatures")
  }
  for feature in model.iterfind("FeatureDeclarations/*/Feature"):
    assert feature.get("dimension") in TRACKMATE_DIMENSIONS, feature.attrib
    assert feature.get("isint") in ("true", "false")
  spots = {}
  for in_frame in model.iterfind("AllSpots/SpotsInFrame"):
    for spot in in_frame.iterfind("Spot"):
      assert spot.get("FRAME") == in_frame.get("frame")
      # TrackMate reads every attribute but ID and name as a number-valued feature.
      assert set(spot.attrib) - {"ID", "name"} <= declared["SpotFeatures"]
      [float(v) for k, v in spot.attrib.items() if k not in ("ID", "name")]
      spots[int(spot.get("ID"))] = spot
  assert len(spots) == int(model.find("AllSpots").get("nspots")) == len(tracks)
  assert {"POSITION_X", "POSITION_Y", "POSITION_Z", "POSITION_T", "FRAME", "QUALITY",
          "RADIUS"} <= declared["SpotFeatures"]  # fmt: skip
  track_ids = []
  for track in model.iterfind("AllTracks/Track"):
    track_ids.append(int(track.get("TRACK_ID")))
    assert set(track.attrib) - {"name"} <= declared["TrackFeatures"]
    for edge in track.iterfind("Edge"):
      assert set(edge.attrib) <= declared["EdgeFeatures"]
      source, target = (spots[int(edge.get(k))] for k in ("SPOT_SOURCE_ID", "SPOT_TARGET_ID"))
      assert int(source.get("FRAME")) < int(target.get("FRAME"))
  # The one-detection track has no edge, so it is no TrackMate track.
  assert track_ids == [3, 7]
  assert [int(t.get("TRACK_ID")) for t in model.iterfind("FilteredTracks/TrackID")] == [3, 7]
  assert [len(t.findall("Edge")) for t in model.iterfind("AllTracks/Track")] == [3, 2]
  assert model.find("AllTracks/Track").get("NUMBER_GAPS") == "1"
  first = spots[0]
  assert float(first.get("POSITION_X")) == pytest.approx(1.5 * 0.2)
  assert float(first.get("POSITION_Y")) == pytest.approx(4.0 * 0.2)
  image = root.find("Settings/ImageData")
  assert (image.get("filename"), image.get("nframes"), image.get("width")) == (
    "movie.tif",
    "6",
    "25",
  )
  back = interop.read_trackmate_xml(path)
  expected = tracks[tracks["particle"] != 9].reset_index(drop=True)
  pd.testing.assert_frame_equal(back, expected, check_dtype=False)


def test_napari_data_is_track_id_t_y_x(tmp_path):
  tracks = example_tracks().sample(frac=1, random_state=0)  # any order in
  data, properties = interop.to_napari(tracks)
  assert data.shape == (8, 4)
  # napari's Tracks layer: (track_id, t, y, x) rows, sorted by track then time.
  np.testing.assert_array_equal(data[:, 0], [3, 3, 3, 3, 7, 7, 7, 9])
  np.testing.assert_array_equal(data[:4, 1], [0, 1, 3, 4])
  np.testing.assert_array_equal(data[:4, 2:], [[4.0, 1.5], [4.5, 2.25], [5.0, 3.0], [5.25, 3.5]])
  assert set(properties) == {"score", "frame"}
  assert all(len(v) == len(data) for v in properties.values())
  np.testing.assert_array_equal(properties["score"][:4], [10, 11, 12, 13])
  path = tmp_path / "movie_napari.csv"
  interop.write_napari_csv(tracks, path)
  table = pd.read_csv(path)
  assert list(table.columns) == ["track_id", "t", "y", "x"]
  np.testing.assert_allclose(table.to_numpy(), data)


def test_napari_builds_a_tracks_layer_from_it(monkeypatch):
  """napari's own Tracks layer takes the data and properties as they are, headless (napari
  is the ``napari`` extra, not part of the test extra: ``pip install -e ".[test,napari]"``)."""
  monkeypatch.setenv("QT_QPA_PLATFORM", os.environ.get("QT_QPA_PLATFORM", "offscreen"))
  layers = pytest.importorskip("napari.layers", reason='napari is the "napari" extra')

  data, properties = interop.to_napari(example_tracks())
  layer = layers.Tracks(data, properties=properties, color_by="score")
  assert layer.data.shape == (8, 4) and layer.color_by == "score"
  np.testing.assert_array_equal(layer.data, data)


def test_bench_batch_runs_quick(tmp_path):
  output = tmp_path / "bench_batch.json"
  result = run_script(
    "bench.py", "--what=batch", "--quick", f"--output={output}", cwd=tmp_path
  )  # the suite's flags, not SMOKE_XLA: mostly registration, which ran faster so (conftest)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads(output.read_text())
  assert set(record["rows"]) == {"1_worker", "2_workers"}
  for row in record["rows"].values():
    assert row["movies"] == 4 and row["movies_per_s"] > 0 and row["tracks"] > 0
  assert record["speedup_2_vs_1"] > 0
