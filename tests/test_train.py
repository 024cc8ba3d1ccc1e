"""Training: a descent step, data parallelism, exact resume, checkpoint errors, the CLI,
and loading the result for inference."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from configs import tiny
from conftest import (
  assert_one_line_error,
  checkpoint_params,
  interrupt_script,
  run_script,
  smoke_env,
)

from qdjax.detect import inference, train, validation

ROOT = Path(__file__).resolve().parents[1]

# The run every test here shares: the tiny model, long enough to be killed part-way.
OVERRIDES = {
  "num_steps": 24,
  "checkpoint_every": 4,
  "eval_every": 8,
  "log_every": 4,
}


def tiny_config():
  config = tiny.get_config()
  for key, value in OVERRIDES.items():
    config[key] = value
  return config


def cli_command(workdir, *extra):
  flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  return [
    sys.executable,
    "experiments/train.py",
    "--config=experiments/configs/tiny.py",
    f"--workdir={workdir}",
    *flags,
    *extra,
  ]


def run_cli(args, **kwargs):
  return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900, **kwargs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted in-process run of the shared config."""
  workdir = tmp_path_factory.mktemp("reference")
  result = train.train_and_evaluate(tiny_config(), workdir)
  return workdir, result


def test_one_step_lowers_the_loss_on_a_fixed_batch():
  experiment = train.build(tiny_config())
  # The same step number draws the same batch: the second call reports the loss on that
  # batch after one SGD step on it.
  state, before = experiment.train_step(experiment.state, 1)
  _, after = experiment.train_step(state, 1)
  assert float(after["loss"]) < float(before["loss"]) - 1e-3


def test_noise_free_source_trains_and_validates_on_the_expected_image():
  config = tiny_config()
  config.data = "noise_free"
  config.validation_size = 4
  experiment = train.build(config)
  images = np.asarray(experiment.draw_batch(1).images)
  # The expected image B + N * (a PSF average in [0, 1]) of the same frames as 'simulate'
  # draws, not integer counts.
  config.data = "simulate"
  counts = np.asarray(train.build(config).draw_batch(1).images)
  assert np.all(images >= experiment.sim_params.background_photons - 1e-4)
  assert np.any(np.abs(images - np.round(images)) > 1e-3)
  assert np.all(counts == np.round(counts))
  # Shot noise around the same means: counts minus expected average out.
  assert abs(float(np.mean(counts - images))) < 5 * np.sqrt(np.mean(images) / counts.size)
  config.data = "noise_free"
  sets = validation.validation_sets(config, experiment.preset, experiment.sim_params)
  for frames in sets.values():
    assert np.any(np.abs(frames["images"] - np.round(frames["images"])) > 1e-3)


def test_config_overrides_reach_training_and_validation_frames():
  config = tiny_config()
  config.overrides.peak_photons = 20.0
  config.overrides.max_particles = 3
  config.validation_size = 2
  experiment = train.build(config)
  assert float(experiment.sim_params.peak_photons) == 20.0
  assert experiment.sim_params.num_particles == (1, 3)
  sets = validation.validation_sets(
    config,
    experiment.preset,
    experiment.sim_params,
    **train.sim_overrides(config, experiment.preset),
  )
  for frames in sets.values():
    assert frames["keypoints"].shape == (2, 3, 2)


FOUR_DEVICES = """
import jax, numpy as np
from qdjax.detect import train
import sys
sys.path.insert(0, "experiments")
from configs import tiny
assert jax.device_count() == 4, jax.devices()
config = tiny.get_config()
config.batch_size = 8
runs = []
for devices in (jax.devices()[:1], jax.devices()):
  experiment = train.build(config, train.data_mesh(devices))
  images = experiment.draw_batch(1).images
  assert len(images.sharding.device_set) == len(devices)
  state = experiment.state
  for step in (1, 2):
    state, metrics = experiment.train_step(state, step)
  runs.append((jax.tree.leaves(jax.device_get(state)), float(metrics["loss"])))
(one, loss_one), (four, loss_four) = runs
scale = max(float(np.abs(a).max()) for a in one)
error = max(float(np.abs(a - b).max()) for a, b in zip(one, four))
print("loss", loss_one, loss_four, "max param difference", error, "of", scale)
assert abs(loss_one - loss_four) <= 1e-5 * abs(loss_one)
assert error <= 1e-5 * max(scale, 1.0)
print("OK")
"""


def test_four_devices_equal_one_device_for_the_same_global_batch():
  env = {**os.environ, **smoke_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})}
  env["JAX_PLATFORMS"] = "cpu"
  proc = run_cli([sys.executable, "-c", FOUR_DEVICES], env=env)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr


def test_resume_from_an_earlier_checkpoint_gives_the_same_parameters(reference, tmp_path):
  ref_dir, ref_result = reference
  # The reference run as a kill just before its last checkpoint leaves it: the last
  # checkpoint and the outputs are missing, while the later metrics records (and a best
  # checkpoint of the last step, if it was the best) are there and must be redone.
  shutil.copytree(ref_dir, tmp_path, dirs_exist_ok=True)
  last = OVERRIDES["num_steps"]
  shutil.rmtree(tmp_path / "checkpoints" / str(last))
  for name in ("result.json", "curves.png"):
    (tmp_path / name).unlink()
  result = train.train_and_evaluate(tiny_config(), tmp_path)
  assert result == ref_result
  for a, b in zip(checkpoint_params(ref_dir), checkpoint_params(tmp_path), strict=True):
    np.testing.assert_array_equal(a, b)
  steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
  assert steps == sorted(set(steps)) and steps[-1] == last


def test_cli_interrupted_and_restarted_matches_an_uninterrupted_run(reference, tmp_path):
  ref_dir, ref_result = reference
  workdir = tmp_path / "run"
  command = cli_command(workdir)
  # Ctrl-C as soon as the first checkpoint is final (Orbax renames it into place).
  interrupted = interrupt_script(
    "train.py", *command[2:], started=lambda _: (workdir / "checkpoints" / "4").is_dir()
  )
  assert_one_line_error(interrupted, "interrupted", "keeps its last checkpoint", code=130)
  assert (workdir / "checkpoints" / "4").is_dir()
  assert not (workdir / "result.json").exists()  # stopped part-way, not after the end
  done = run_cli(command)
  assert done.returncode == 0, done.stderr
  assert "validation AUC" in done.stdout and "eps=1px" in done.stdout
  result = json.loads((workdir / "result.json").read_text())
  assert set(result["auc"]) == {"1", "2", "3"}
  assert result["frames_seen"] == OVERRIDES["num_steps"] * 8
  assert result["auc"] == ref_result["auc"]
  assert (workdir / "curves.png").stat().st_size > 0
  for a, b in zip(checkpoint_params(ref_dir), checkpoint_params(workdir), strict=True):
    np.testing.assert_array_equal(a, b)


def _corrupt(directory: Path):
  for path in directory.rglob("*"):
    if path.is_file():
      path.write_bytes(b"\x00garbage")


def test_corrupt_or_missing_checkpoints_give_one_line_errors(reference, tmp_path):
  ref_dir, _ = reference
  workdir = tmp_path / "run"
  shutil.copytree(ref_dir, workdir)
  _corrupt(workdir / "checkpoints" / str(OVERRIDES["num_steps"]))
  with pytest.raises(ValueError, match="corrupt") as info:
    train.train_and_evaluate(tiny_config(), workdir)
  assert "\n" not in str(info.value)
  assert_one_line_error(run_cli(cli_command(workdir)), "corrupt")
  _corrupt(workdir / "best")
  with pytest.raises(ValueError, match="corrupt"):
    inference.load(workdir)
  # The command lines that load a model say so in one line, without Orbax's log lines or
  # TensorStore's "Event loop is closed" tracebacks, and write nothing.
  frames = tmp_path / "frames.npy"
  np.save(frames, np.zeros((2, 24, 25), np.float32))
  output = tmp_path / "locs.csv"
  located = run_script(
    "locate.py", f"--workdir={workdir}", f"--input={frames}", f"--output={output}"
  )
  assert_one_line_error(located, "is corrupt", code=2)
  assert "Event loop" not in located.stderr
  assert not re.search(r"^I\d{4} ", located.stderr, re.M)  # no absl INFO lines
  assert not output.exists()
  evaluated = run_script(
    "evaluate.py", f"--workdir={workdir}", "--methods=model", f"--output_dir={tmp_path / 'ev'}"
  )
  assert_one_line_error(evaluated, "is corrupt", code=2)
  assert "Event loop" not in evaluated.stderr
  assert not (tmp_path / "ev").exists()
  with pytest.raises(FileNotFoundError, match="no such workdir"):
    inference.load(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError):
    inference.load(tmp_path / "empty")


def test_cli_bad_values_give_one_line_errors(tmp_path):
  assert_one_line_error(run_cli(cli_command(tmp_path, "--diffusion=fast")), "--diffusion")
  bad = run_cli(cli_command(tmp_path, "--config.num_steps=0"))
  assert_one_line_error(bad, "num_steps")
  assert_one_line_error(run_cli(cli_command(tmp_path, "--config.no_such_field=1")), "no_such")
  assert not (tmp_path / "checkpoints").exists()


def test_resume_is_refused_after_the_simulation_parameters_changed(reference, tmp_path):
  ref_dir, _ = reference
  workdir = tmp_path / "run"
  shutil.copytree(ref_dir, workdir)
  before = {p: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  config = tiny_config()
  config.overrides.peak_photons = 5.0
  with pytest.raises(ValueError, match=r"simulation parameters changed .*peak_photons"):
    train.train_and_evaluate(config, workdir)
  result = run_cli(cli_command(workdir, "--config.overrides.peak_photons=5"))
  assert_one_line_error(result, "simulation parameters changed", "peak_photons")
  assert {p: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before


def assert_no_shared_frames(groups: dict) -> None:
  seen = {}
  for name, images in groups.items():
    for i, image in enumerate(np.asarray(images)):
      key = image.tobytes()
      assert key not in seen, f"{name} frame {i} is {seen[key]}"
      seen[key] = f"{name} frame {i}"


def test_training_validation_and_test_frames_are_all_different():
  """Every split draws its own frames: under one distribution, so that only the keys differ,
  no two splits share a frame, nor do they with the batches training simulates; and the
  validation sets training selects on share none with the test sets of their regime."""
  from qdjax.sim import data

  config = tiny_config()
  experiment = train.build(config)
  seeds = [data.split_seed(s, split) for s in range(3) for split in data.SPLITS]
  assert len(set(seeds)) == len(seeds)
  n = config.validation_size
  same_distribution = {
    split: data.generate(experiment.sim_params, n, data.split_seed(0, split))["images"]
    for split in data.SPLITS
  }
  for step in (1, 2):
    same_distribution[f"training step {step}"] = experiment.draw_batch(step).images
  assert_no_shared_frames(same_distribution)
  sets = validation.validation_sets(config, experiment.preset, experiment.sim_params)
  for split, held_out in sets.items():
    test_split = f"test_d{split[-1]}"
    params = data.split_params(experiment.preset, test_split)
    test = data.generate(params, n, data.split_seed(config.validation_seed, test_split))
    assert_no_shared_frames({split: held_out["images"], test_split: test["images"]})


def test_inference_loads_workdir_and_export_on_any_frame_size(reference, tmp_path):
  ref_dir, _ = reference
  locator = inference.load(ref_dir)
  rng = np.random.default_rng(0)
  for shape in [(5, 24, 25), (3, 8, 12)]:
    found = locator(rng.poisson(4.0, shape).astype(np.float32))
    assert len(found) == shape[0]
    for det in found:
      assert det.shape[1] == 3 and len(det) <= 4
      assert np.all(np.diff(det[:, 2]) <= 0)  # sorted by score
  frames = rng.poisson(4.0, (6, 24, 25)).astype(np.float32)
  everything = locator(frames)
  # In chunks of 4 frames (the second padded with copies of its last frame): the same.
  for a, b in zip(everything, inference.load(ref_dir, chunk=4)(frames), strict=True):
    np.testing.assert_array_equal(a, b)
  threshold = float(np.median(np.concatenate([d[:, 2] for d in everything])))
  kept = inference.load(ref_dir, min_score=threshold)(frames)
  for all_dets, some in zip(everything, kept, strict=True):
    np.testing.assert_array_equal(some, all_dets[all_dets[:, 2] >= threshold])
  exported = inference.export_pretrained(ref_dir, tmp_path / "export", command="test")
  info = json.loads((exported / "config.json").read_text())
  assert info["training_command"] == "test" and info["preset"]["preset"] == "paper"
  again = inference.load(exported)(frames)
  for a, b in zip(everything, again, strict=True):
    np.testing.assert_array_equal(a, b)


def test_init_from_starts_from_another_runs_best_weights(reference, tmp_path):
  from qdjax.detect import checkpoint

  ref_dir, _ = reference
  exported = inference.export_pretrained(ref_dir, tmp_path / "export", command="test")
  scratch = train.build(tiny_config())
  best, _ = checkpoint.restore_best(ref_dir, scratch.state["model"])
  for source in (ref_dir, exported):  # a workdir's best checkpoint, or exported weights
    config = tiny_config()
    config.init_from = str(source)
    experiment = train.build(config)
    state = train.warm_start(config, experiment)
    for a, b in zip(
      jax.tree.leaves(state["model"].to_pure_dict()), jax.tree.leaves(best), strict=True
    ):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The training loop starts from them: step 1's loss is that of the trained weights. (The
  # run keeps the shared config's length, so its step is the reference's compiled program.)
  config = tiny_config()
  config.init_from = str(exported)
  config.log_every, config.eval_every = 1, config.num_steps
  train.train_and_evaluate(config, tmp_path / "warm")
  first = json.loads((tmp_path / "warm" / "metrics.jsonl").read_text().splitlines()[0])
  _, fresh = scratch.train_step(scratch.state, 1)
  assert first["loss"] < float(fresh["loss"])
  config.model.name = "s4_light"
  with pytest.raises(ValueError, match="init_from"):
    train.warm_start(config, train.build(config))
