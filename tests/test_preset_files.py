"""Preset files (docs/spec.md, section 7) and the ``invivo`` preset (docs/spec.md, section 9)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_one_line_error

from qdjax.sim import data, presets, simulate


def write(path, record):
  path.write_text(json.dumps(record))
  return str(path)


def test_preset_file_round_trip(tmp_path):
  record = {
    "preset": "my_scope",
    "peak_photons": 12.5,
    "background_photons": 0.8,
    "sigma_xy_um": 0.25,
    "detector": "pmt",
    "pmt_alpha": 0.5,
    "pmt_dark_sigma": 4.0,
    "pmt_offset": 1.5,
    "diffusion_um2_s": 0.7,
    "blink_on_s": 0.5,
    "blink_off_s": 0.2,
    "provenance": {"peak_photons": "fitted to my frames"},
    "standard_errors": {"peak_photons": 0.4},
  }
  path = tmp_path / "scope.json"
  presets.write_file(path, record)
  preset = presets.get(str(path))
  assert preset.name == "my_scope"
  assert preset.regimes == (0.7, 0.7, 0.7) and preset.train_diffusion == (0.35, 1.4)
  assert preset.blinking_s == (0.5, 0.2) and presets.get("paper").blinking_s[1] == 0
  params = preset.sim_params(regime=1)
  out = params.to_dict()
  for key in ("peak_photons", "background_photons", "sigma_xy_um", "pmt_alpha", "pmt_offset"):
    assert out[key] == pytest.approx(record[key])
  assert out["detector"] == "pmt"
  # Values the file leaves out are the base preset's, and say so.
  assert out["pixel_size_um"] == presets.get("paper").values["pixel_size_um"]
  recorded = data.params_record(params, preset)
  assert recorded["provenance"]["peak_photons"] == "fitted to my frames"
  assert recorded["provenance"]["sigma_xy_um"] == "set by the preset file"
  assert str(path) in recorded["provenance"]["preset_file"]


@pytest.mark.parametrize(
  "record, needle",
  [
    ({"peak_photons": 3, "bogus": 1}, "'bogus'"),
    ({"pmt_alpha": -0.44}, "pmt_alpha"),
    ({"peak_photons": "many"}, "peak_photons"),
    ({"regimes": [0.1, 0.2]}, "regimes"),
    ({"train_diffusion": [3, 1]}, "train_diffusion"),
    ({"blink_off_s": -1}, "blink_off_s"),
    ({"blink_on_s": 0, "blink_off_s": 1}, "blink_on_s"),
    ({"detector": "ccd"}, "detector"),
    ({"base": "nope"}, "base"),
    ({"provenance": {"peak_photons": 3}}, "provenance"),
    ([1, 2], "JSON object"),
  ],
)
def test_bad_preset_files_name_the_problem(tmp_path, record, needle):
  path = write(tmp_path / "bad.json", record)
  with pytest.raises(ValueError, match=needle) as info:
    presets.get(path)
  assert "\n" not in str(info.value) and "bad.json" in str(info.value)


def test_missing_and_unparsable_preset_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.json"):
    presets.get(str(tmp_path / "nope.json"))
  bad = tmp_path / "broken.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    presets.get(str(bad))


def test_write_file_refuses_an_invalid_record_and_keeps_the_old_file(tmp_path):
  path = tmp_path / "scope.json"
  path.write_text("precious")
  with pytest.raises(ValueError, match="pmt_dark_sigma"):
    presets.write_file(path, {"pmt_dark_sigma": -1})
  assert path.read_text() == "precious"


def test_simulate_script_takes_a_preset_file(tmp_path, script):
  preset_path = write(
    tmp_path / "scope.json",
    {
      "peak_photons": 9.0,
      "regimes": [0.2, 0.4, 2.0],
      "detector": "pmt",
      "pmt_alpha": 0.5,
      "provenance": {"peak_photons": "mine"},
    },
  )
  out = tmp_path / "f.npz"
  result = script(
    "simulate.py", f"--preset={preset_path}", "--regime=2", "--num_images=2", f"--output={out}"
  )
  assert result.returncode == 0, result.stderr
  record = json.loads(str(np.load(out)["params"]))
  assert record["peak_photons"] == 9.0 and record["diffusion_um2_s"] == pytest.approx(0.4)
  assert record["provenance"]["peak_photons"] == "mine"
  assert "scope.json" in record["provenance"]["preset_file"]
  assert record["detector"] == "pmt" and record["pmt_alpha"] == 0.5
  images = np.load(out)["images"]  # PMT output: not integer photon counts
  assert images.shape == (2, 24, 25) and not np.all(images == np.round(images))
  assert images.dtype == np.float32 and record["images_dtype"] == "float32"
  bad = write(tmp_path / "bad.json", {"peak_photons": 9.0, "colour": "red"})
  result = script("simulate.py", f"--preset={bad}", "--regime=2", f"--output={out}")
  assert_one_line_error(result, "colour")


def test_invivo_preset_reproduces_the_in_vivo_spot():
  """spec section 9: a static in-focus QD gives a spot of sd ~1 px and 90-160 photons over a
  0.6-1.2 photon background, recorded through the PMT."""
  preset = presets.get("invivo")
  for name in ("pixel_size_um", "peak_photons", "background_photons", "pmt_alpha", "regimes"):
    assert preset.provenance[name]
  d1, d2, d3 = preset.regimes
  assert d3 == pytest.approx(10 * d1) and d1 <= d2 <= d3
  params = preset.sim_params(diffusion=0.0)
  assert params.detector == "pmt"
  a = float(params.pixel_size_um)
  centre = (12 * a, 12 * a)
  positions = jnp.broadcast_to(
    jnp.array([centre[0], centre[1], 0.0]), (1, params.height, params.width, 1, 3)
  )
  spot = np.asarray(simulate.expected_image(positions, jnp.array([True]), params), np.float64)
  background = float(params.background_photons)
  assert 0.6 <= background <= 1.2
  spot -= background
  total = spot.sum()
  assert 90 <= total <= 160
  rows, cols = np.indices(spot.shape)
  sd_y = np.sqrt((spot * (rows - 12) ** 2).sum() / total)
  assert 0.95 <= sd_y <= 1.5
