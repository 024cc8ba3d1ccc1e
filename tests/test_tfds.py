"""The qd2pm TFDS export: built without TensorFlow, read back through tfds.data_source,
identical to the simulator, safe to interrupt and to re-run; and the batch loader."""

import json
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import assert_one_line_error, checkpoint_params, run_script

from qdjax.datasets import SPLITS, export, loader
from qdjax.datasets.qd2pm import qd2pm_dataset_builder
from qdjax.sim import data, presets

SCALE = 0.002  # train 60, validation 4, test_d1 5, test_d2 5, test_d3 4 frames
# One compiled chunk size serves every split of a tiny export and these comparisons.
CHUNK = 64


def sizes(scale=SCALE):
  preset = presets.get("paper")
  return {split: data.split_size(preset, split, scale) for split in SPLITS}


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
  """One export through the CLI, with TensorFlow made impossible to import."""
  root = tmp_path_factory.mktemp("tfds_cli")
  # Even where TensorFlow is installed, this shadow package makes `import tensorflow`
  # fail in the export's process, as it does where TensorFlow is absent.
  blocker = root / "block" / "tensorflow"
  blocker.mkdir(parents=True)
  (blocker / "__init__.py").write_text("raise ImportError('TensorFlow is blocked by the test')\n")
  data_dir = root / "data"
  args = (f"--data_dir={data_dir}", f"--scale={SCALE}", "--with_expected")
  env = {"PYTHONPATH": str(root / "block")}
  result = run_script("export_tfds.py", *args, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  return data_dir, args, env, result


def test_export_builds_without_tensorflow(cli_export):
  data_dir, _, _, result = cli_export
  assert "wrote" in result.stdout
  # A dataset that downloads nothing says nothing about downloading; no INFO logging.
  assert "Downloading" not in result.stdout + result.stderr
  assert not re.search(r"^I\d{4} ", result.stderr, re.M)
  dataset = data_dir / "qd2pm" / "paper" / "1.0.0"
  shards = sorted(p.name for p in dataset.glob("*.array_record-*"))
  assert [s.split(".")[0] for s in shards] == sorted(f"qd2pm-{split}" for split in SPLITS)
  assert not list(dataset.parent.glob("incomplete*"))
  # Nor does reading it need TensorFlow.
  tfds.data_source("qd2pm/paper", data_dir=data_dir)["train"][0]
  assert "tensorflow" not in sys.modules


def test_reads_back_with_counts_shapes_dtypes_and_metadata(cli_export):
  data_dir = cli_export[0]
  source = tfds.data_source("qd2pm/paper", data_dir=data_dir)
  assert {split: len(source[split]) for split in SPLITS} == sizes()
  example = source["test_d3"][3]
  for name, shape in [("image", (24, 25)), ("expected", (24, 25)), ("keypoints", (1, 2))]:
    assert example[name].dtype == np.float32 and example[name].shape == shape, name
  assert example["present"].dtype == bool and example["present"].shape == (1,)
  assert example["z"].dtype == np.float32 and example["z"].shape == (1,)
  preset = presets.get("paper")
  assert np.float32(example["diffusion"]) == np.float32(preset.regimes[2])
  metadata = source["train"].dataset_info.metadata
  assert metadata["scale"] == SCALE and metadata["seed"] == 0 and metadata["with_expected"]
  assert metadata["params"]["peak_photons"] == preset.values["peak_photons"]
  assert set(metadata["params"]["provenance"]) >= {"peak_photons", "regimes"}
  assert metadata["splits"]["test_d2"]["seed"] == data.split_seed(0, "test_d2")
  description = source["train"].dataset_info.description
  assert "provenance" in description and "test_d3 1870" in description


def test_holds_the_simulators_frames(cli_export):
  source = tfds.data_source("qd2pm/paper", data_dir=cli_export[0])
  preset = presets.get("paper")
  for split, n in sizes().items():
    params = data.split_params(preset, split)
    frames = data.generate(params, CHUNK, data.split_seed(0, split), chunk=CHUNK)
    stored = source[split].__getitems__(list(range(n)))
    for name, feature in [("images", "image"), ("expected", "expected"), ("z", "z")]:
      np.testing.assert_array_equal(np.stack([e[feature] for e in stored]), frames[name][:n])
    keypoints = np.stack([e["keypoints"] for e in stored])
    np.testing.assert_array_equal(keypoints, frames["keypoints"][:n])  # NaN == NaN here
    present = np.stack([e["present"] for e in stored])
    np.testing.assert_array_equal(present, frames["present"][:n])
    diffusion = np.array([e["diffusion"] for e in stored], np.float32)
    np.testing.assert_array_equal(diffusion, frames["diffusion"][:n])
    # Training frames span the range (D differs per frame); a test set has its regime's D.
    assert len(set(diffusion.tolist())) == (n if split in ("train", "validation") else 1)


def test_readable_without_qdjax(cli_export):
  code = (
    "import sys, tensorflow_datasets as tfds\n"
    f"s = tfds.data_source('qd2pm/paper', data_dir={str(cli_export[0])!r}, download=False)\n"
    "assert 'qdjax' not in sys.modules and 'tensorflow' not in sys.modules\n"
    "print(len(s['test_d1']), sorted(s['test_d1'][0]))\n"
  )
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "5 ['diffusion', 'expected', 'image', 'keypoints', 'present', 'z']" in result.stdout


def test_second_export_verifies_and_changes_nothing(cli_export):
  data_dir, args, env, _ = cli_export
  files = sorted((data_dir / "qd2pm" / "paper" / "1.0.0").iterdir())
  before = {f: f.stat().st_mtime_ns for f in files}
  result = run_script("export_tfds.py", *args, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "verified" in result.stdout
  assert {f: f.stat().st_mtime_ns for f in files} == before
  # Other settings in the same place: refused, nothing overwritten.
  result = run_script("export_tfds.py", f"--data_dir={data_dir}", "--scale=0.003", env=env)
  assert_one_line_error(result, "scale: 0.002 stored, 0.003 now")
  assert {f: f.stat().st_mtime_ns for f in files} == before


def test_missing_data_dir_parent_is_a_one_line_error(tmp_path):
  result = run_script("export_tfds.py", f"--data_dir={tmp_path}/missing/tfds")
  assert_one_line_error(result, "parent directory does not exist", "missing")


def test_bad_preset_is_a_one_line_error(tmp_path):
  result = run_script("export_tfds.py", f"--data_dir={tmp_path}", "--preset=nope")
  assert_one_line_error(result, "unknown preset 'nope'")
  assert not list(tmp_path.iterdir())


def test_interrupted_export_leaves_nothing_complete_and_reruns(tmp_path, monkeypatch):
  generate = qd2pm_dataset_builder.Builder._generate_examples

  def interrupted(self, preset, split, num_examples, chunk):
    if split == "test_d1":  # train and validation are already on disk by now
      raise KeyboardInterrupt
    yield from generate(self, preset, split, num_examples, chunk)

  monkeypatch.setattr(qd2pm_dataset_builder.Builder, "_generate_examples", interrupted)
  with pytest.raises(KeyboardInterrupt):
    export(tmp_path, scale=SCALE)
  assert not (tmp_path / "qd2pm" / "paper" / "1.0.0").exists()
  assert not list((tmp_path / "qd2pm" / "paper").glob("incomplete*"))
  with pytest.raises(FileNotFoundError, match="export_tfds.py"):
    loader.open_split(tmp_path)

  monkeypatch.setattr(qd2pm_dataset_builder.Builder, "_generate_examples", generate)
  builder, built = export(tmp_path, scale=SCALE)
  assert built and "expected" not in builder.info.features
  assert len(loader.open_split(tmp_path, split="test_d1")) == sizes()["test_d1"]


def test_loader_batches_are_deterministic_and_resumable(cli_export):
  data_dir = cli_export[0]
  batch_size, n = 4, sizes()["train"]
  steps_per_epoch = n // batch_size
  first = loader.iterate_batches(data_dir, "qd2pm/paper", "train", batch_size, seed=7, start_step=0)
  batches = [next(first) for _ in range(2 * steps_per_epoch)]
  assert batches[0]["images"].shape == (batch_size, 24, 25)
  assert batches[0]["images"].dtype == np.float32
  assert batches[0]["keypoints"].shape == (batch_size, 1, 2)
  assert batches[0]["present"].shape == (batch_size, 1) and batches[0]["present"].dtype == bool
  assert batches[0]["diffusion"].dtype == np.float32

  again = loader.iterate_batches(data_dir, "qd2pm/paper", "train", batch_size, 7, 0)
  np.testing.assert_array_equal(next(again)["images"], batches[0]["images"])
  resumed = loader.iterate_batches(data_dir, "qd2pm/paper", "train", batch_size, 7, 17)
  np.testing.assert_array_equal(next(resumed)["images"], batches[17]["images"])
  other = loader.iterate_batches(data_dir, "qd2pm/paper", "train", batch_size, 8, 0)
  assert not np.array_equal(next(other)["images"], batches[0]["images"])

  # Each epoch is a permutation of the split, and the next epoch a different one.
  source = tfds.data_source("qd2pm/paper", data_dir=data_dir)["train"]
  stored = {np.asarray(e["image"]).tobytes(): i for i, e in enumerate(source)}
  order = [stored[im.tobytes()] for b in batches for im in b["images"]]
  assert sorted(order[:n]) == list(range(n)) == sorted(order[n:])
  assert order[:n] != order[n:]


def test_loader_names_a_missing_export(tmp_path):
  with pytest.raises(FileNotFoundError, match="no TFDS dataset 'qd2pm/paper'"):
    loader.iterate_batches(tmp_path, "qd2pm/paper", "train", 4, 0, 0)
  assert not (tmp_path / "qd2pm").exists()  # and nothing was generated in its place


def _train_tiny_on(data_dir, workdir):
  """Runs train.py on the tiny config, reading the TFDS export in ``data_dir``."""
  return run_script(
    "train.py",
    "--config=experiments/configs/tiny.py",
    "--config.data=tfds",
    f"--config.tfds_data_dir={data_dir}",
    f"--workdir={workdir}",
  )


def test_train_reads_the_export(cli_export, tmp_path):
  """The CLI run's parameters are exactly those of replaying the loader's batches of the
  export's train split through the training step: a run that simulated its batches, read
  another split or other records would end elsewhere."""
  from configs import tiny

  from qdjax.detect import sources, train

  data_dir = cli_export[0]
  workdir = tmp_path / "train"
  result = _train_tiny_on(data_dir, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((workdir / "result.json").read_text())
  config = tiny.get_config()
  assert record["frames_seen"] == config.num_steps * config.batch_size
  assert set(record["auc"]) == {"1", "2", "3"}

  experiment = train.build(config)
  state = experiment.state
  batches = loader.iterate_batches(
    data_dir, "qd2pm/paper", "train", config.batch_size, config.seed, start_step=0
  )
  for _ in range(config.num_steps):
    batch = next(batches)
    batch = sources.Batch(batch["images"], batch["keypoints"], batch["present"])
    state, _ = experiment.train_step_on_batch(state, batch)
  trained = checkpoint_params(workdir)
  replayed = jax.tree.leaves(jax.device_get(state["model"]).to_pure_dict())
  for a, b in zip(trained, replayed, strict=True):
    np.testing.assert_array_equal(a, b)


def test_corrupt_array_record_is_a_one_line_error_for_export_and_train(cli_export, tmp_path):
  data_dir = tmp_path / "data"
  shutil.copytree(cli_export[0], data_dir)
  (shard,) = (data_dir / "qd2pm" / "paper" / "1.0.0").glob("qd2pm-train.array_record-*")
  damaged = bytearray(shard.read_bytes())
  damaged[64:-64] = b"\x07" * (len(damaged) - 128)
  shard.write_bytes(bytes(damaged))
  args = [a for a in cli_export[1] if not a.startswith("--data_dir")]
  result = run_script("export_tfds.py", f"--data_dir={data_dir}", *args, env=cli_export[2])
  assert_one_line_error(result, "split 'train' is corrupt", code=2)
  workdir = tmp_path / "train"
  result = _train_tiny_on(data_dir, workdir)
  assert_one_line_error(result, "split 'train' is corrupt", code=2)
  assert not workdir.exists()  # failed before its first checkpoint: nothing left behind
  assert shard.read_bytes() == bytes(damaged)
