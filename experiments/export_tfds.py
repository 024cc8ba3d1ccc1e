r"""Export the study-sized datasets as the TFDS dataset ``qd2pm/<preset>`` (array_record).

  python experiments/export_tfds.py --data_dir=~/tensorflow_datasets [--scale=0.01]

Needs no TensorFlow. Read it back with
``tfds.data_source('qd2pm/paper', data_dir=DIR)``. Running it again on the same
``--data_dir`` generates nothing: it verifies the stored export instead.
"""

from pathlib import Path

from absl import flags

from qdjax import cli, io
from qdjax.sim import presets

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.", required=True)
_PRESET = flags.DEFINE_string("preset", "paper", f"Builder config: one of {presets.NAMES}.")
_SCALE = flags.DEFINE_float("scale", 1.0, "Split sizes relative to the study's.")
_SEED = flags.DEFINE_integer("seed", 0, "User seed; split s uses data.split_seed(seed, s).")
_WITH_EXPECTED = flags.DEFINE_bool("with_expected", False, "Also store noise-free images.")


def main(argv):
  cli.check_no_extra_args(argv)
  if not (Path(_DATA_DIR.value).expanduser() / "qd2pm").is_dir():  # a verify only reads
    io.check_output_dir(_DATA_DIR.value)
  # Imported here, not at the top: --help and a bad flag exit without loading it.
  from qdjax import datasets

  # On Ctrl-C or SIGTERM TFDS removes its incomplete directory; a data_dir this run made is
  # removed too.
  with cli.removed_on_failure(_DATA_DIR.value):
    builder, built = datasets.export(
      _DATA_DIR.value,
      _PRESET.value,
      scale=_SCALE.value,
      seed=_SEED.value,
      with_expected=_WITH_EXPECTED.value,
    )
  sizes = ", ".join(f"{name} {split.num_examples}" for name, split in builder.info.splits.items())
  print(f"{'wrote' if built else 'verified'} {builder.data_path} ({sizes})")


if __name__ == "__main__":
  cli.run(main)
