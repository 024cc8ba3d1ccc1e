"""The command lines' contract: exit codes, one-line errors, nothing lost, Ctrl-C.

Exit codes: 0 success and --help, 2 bad usage or input, 1 anything else, 130 interrupted.
Each bad case runs the real script and checks that its input and earlier outputs are intact.
"""

import hashlib
import os

import numpy as np
import pytest
from conftest import assert_one_line_error, interrupt_script, run_script

from qdjax.localize import files as locate_lib


def digest(path):
  return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def broken_configs(tmp_path):
  (tmp_path / "syntax.py").write_text("def get_config(:\n")
  (tmp_path / "empty.py").write_text("x = 1\n")
  return tmp_path


@pytest.mark.parametrize(
  "script, case, needle",
  [
    ("simulate.py", "--config.bogus=1", "no such config field: --config.bogus"),
    ("evaluate.py", "--config.bogus=1", "no such config field: --config.bogus"),
    ("train.py", "--config={dir}/missing.py", "missing.py: [Errno 2] No such file"),
    ("calibrate.py", "--config={dir}/syntax.py", "syntax.py: invalid syntax (line 1)"),
  ],
)
def test_config_errors_are_one_line(broken_configs, script, case, needle):
  before = sorted(broken_configs.iterdir())
  extra = [f"--output={broken_configs / 'out.npz'}"] if script == "simulate.py" else []
  result = run_script(script, case.format(dir=broken_configs), *extra)
  assert_one_line_error(result, needle, code=2)
  assert sorted(broken_configs.iterdir()) == before


def test_help_exits_zero_and_lists_the_simulation_overrides():
  for script in ("simulate.py", "train.py"):
    result = run_script(script, "--help")
    assert result.returncode == 0, result.stderr
    assert "--config.overrides.<name>=value" in result.stdout
    assert "peak_photons" in result.stdout and "background_photons" in result.stdout


@pytest.fixture
def stack(tmp_path):
  path = tmp_path / "in.npy"
  np.save(path, np.random.default_rng(0).poisson(3.0, (4, 24, 25)).astype(np.float32))
  earlier = tmp_path / "earlier.csv"
  earlier.write_text("frame,x,y,score\n0,1.0,2.0,3.0\n")
  return path, earlier, {p: digest(p) for p in (path, earlier)}


@pytest.mark.parametrize(
  "output, extra, needle",
  [
    ("in.npy", (), "would overwrite"),
    (".", (), "is a directory"),
    ("earlier.csv", ("--min_score=nan",), "min_score must be a number, got nan"),
  ],
)
def test_locate_never_writes_over_its_input_or_into_a_directory(stack, output, extra, needle):
  path, earlier, digests = stack
  folder = path.parent
  before = sorted(folder.iterdir())
  result = run_script(
    "locate.py", "--method=trackpy", f"--input={path}", f"--output={folder}/{output}", *extra
  )
  assert_one_line_error(result, needle, code=2)
  for file, hashed in digests.items():
    assert digest(file) == hashed, file
  assert sorted(folder.iterdir()) == before


@pytest.mark.parametrize(
  "output, plot, error",
  [
    ("sub/../in.npy", None, "would overwrite"),
    ("link.npy", None, "would overwrite"),  # a symlink to the input
    ("hard.npy", None, "would overwrite"),  # a hard link to the input
    ("locs.csv", "locs.csv", "would overwrite"),  # --plot's picture is the output
    ("new/", None, "is a directory"),
    ("missing/locs.csv", None, "does not exist"),
  ],
)
def test_locate_checks_every_output_path_before_any_work(stack, output, plot, error):
  path, _, _ = stack
  folder = path.parent
  (folder / "sub").mkdir()
  (folder / "link.npy").symlink_to(path)
  os.link(path, folder / "hard.npy")
  with pytest.raises((ValueError, OSError), match=error):
    plot_path = None if plot is None else f"{folder}/{plot}"
    locate_lib.check_arguments(str(path), f"{folder}/{output}", 0.0, plot_path)
  locate_lib.check_arguments(path, folder / "locs.csv", 0.0, folder / "locs.png")


def no_partial_files(folder):
  return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_ctrl_c_during_locate_writes_nothing(tmp_path):
  frames = tmp_path / "frames.npy"
  np.save(frames, np.random.default_rng(1).poisson(3.0, (3000, 24, 25)).astype(np.float32))
  before = digest(frames)
  output = tmp_path / "locs.csv"
  result = interrupt_script(
    "locate.py",
    "--method=mle",
    f"--input={frames}",
    f"--output={output}",
    "--chunk=64",
    started=lambda err: "locate:" in err,
  )
  assert_one_line_error(result, "interrupted", code=130)
  assert not output.exists() and not no_partial_files(tmp_path)
  assert digest(frames) == before


def test_ctrl_c_during_simulate_writes_nothing_and_runs_from_any_directory(tmp_path):
  # From another working directory: the default config is found beside the script.
  output = tmp_path / "frames.npz"
  result = interrupt_script(
    "simulate.py",
    "--regime=1",
    "--num_images=200000",
    f"--output={output}",
    started=lambda err: "simulate:" in err,
    cwd=tmp_path,
  )
  assert_one_line_error(result, "interrupted", code=130)
  assert not list(tmp_path.iterdir())


def test_ctrl_c_during_export_leaves_no_dataset(tmp_path):
  data_dir = tmp_path / "tfds"
  result = interrupt_script(
    "export_tfds.py",
    f"--data_dir={data_dir}",
    "--scale=0.5",
    started=lambda err: "qd2pm/train:" in err,
  )
  assert_one_line_error(result, "interrupted", code=130)
  assert not data_dir.exists()  # made by this run, so removed with what TFDS left


def test_cache_environment_keeps_the_users_choice_and_remakes_its_own(monkeypatch, tmp_path):
  """A child process makes qdjax's cache choice again from its own QDJAX_COMPILATION_CACHE,
  even where it inherited the parent's; a directory the user chose through JAX's own
  variable is kept."""
  from qdjax import cli

  env = dict(os.environ)
  monkeypatch.setattr(os, "environ", env)
  for name in ("JAX_COMPILATION_CACHE_DIR", "QDJAX_JAX_COMPILATION_CACHE_DIR"):
    env.pop(name, None)
  env["QDJAX_COMPILATION_CACHE"] = str(tmp_path / "parent")
  assert cli.cache_environment() == tmp_path / "parent"
  assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "parent")
  assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0.0"
  env["QDJAX_COMPILATION_CACHE"] = str(tmp_path / "child")  # inherited, then told otherwise
  assert cli.cache_environment() == tmp_path / "child"
  assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "child")
  env["QDJAX_COMPILATION_CACHE"] = "off"
  assert cli.cache_environment() is None and "JAX_COMPILATION_CACHE_DIR" not in env
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "users")
  env["QDJAX_COMPILATION_CACHE"] = str(tmp_path / "ignored")
  assert cli.cache_environment() == tmp_path / "users"
  assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "users")
