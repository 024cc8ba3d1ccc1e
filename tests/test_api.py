"""The public API: ``import qdjax`` is free of side effects, and ``qdjax.track`` gives what
``track.py`` gives."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from test_track import write_movie

import qdjax


def test_import_changes_nothing():
  """A fresh interpreter: importing qdjax loads no JAX, matplotlib or absl, and touches no
  logging or plotting backend; the public names are there."""
  code = (
    "import logging, sys; before = dict(logging.root.manager.loggerDict); import qdjax; "
    "heavy = ('jax', 'matplotlib', 'absl', 'flax'); "
    "assert not any(m.split('.')[0] in heavy for m in sys.modules), "
    "sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'matplotlib', 'absl')); "
    "assert dict(logging.root.manager.loggerDict) == before; "
    "assert callable(qdjax.track) and callable(qdjax.locate); print(sorted(qdjax.__all__))"
  )
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert "'track'" in result.stdout


def test_track_in_three_lines_equals_the_script(script, tmp_path):
  movie = tmp_path / "movie.npy"
  write_movie(movie, n_frames=14)
  tracks, per_track = qdjax.track(str(movie), preset="paper", method="trackpy")
  assert callable(qdjax.track)  # the function, not shadowed by a submodule's import
  out, table = tmp_path / "t.csv", tmp_path / "d.csv"
  result = script(
    "track.py",
    f"--input={movie}",
    "--preset=paper",
    "--method=trackpy",
    f"--output={out}",
    f"--diffusion_output={table}",
  )
  assert result.returncode == 0, result.stderr
  written = pd.read_csv(table)
  assert len(written) == len(per_track) >= 2
  np.testing.assert_allclose(written["D_um2_s"], per_track["D_um2_s"], rtol=1e-5)
  assert len(pd.read_csv(out)) == len(tracks)
  # An array works as well as a file.
  again = qdjax.track(np.load(movie), preset="paper", method="trackpy")
  np.testing.assert_allclose(again.diffusion["D_um2_s"], per_track["D_um2_s"])


def test_locate_and_simulate():
  frames, truth = qdjax.simulate_movie(
    "paper", num_frames=4, seed=1, height=32, width=32, num_particles=2, peak_photons=30.0
  )
  assert frames.shape == (4, 32, 32) and frames.dtype == np.float32
  assert set(truth.columns) >= {"frame", "particle", "x", "y"}
  found = qdjax.locate(frames, method="trackpy", preset="paper")
  assert list(found.columns) == ["frame", "x", "y", "score"]
  assert found["frame"].between(0, 3).all()
  with pytest.raises(ValueError, match="model is for method 'model'"):
    qdjax.locate(frames, method="trackpy", model="general")
