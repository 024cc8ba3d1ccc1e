"""qdjax's simulated datasets in TFDS form, written and read without TensorFlow.

``qd2pm/<preset>`` (one builder config per ``qdjax.sim.presets`` name) holds the study's
splits; ``export`` writes it as array_record, ``loader.iterate_batches`` reads it back in
deterministic batches for training. Importing this package registers ``qd2pm`` with TFDS;
readers without qdjax can still open an export with ``tfds.data_source``.
"""

from qdjax.datasets.export import export, verify
from qdjax.datasets.qd2pm import SPLITS, Builder, generation_record

__all__ = ["SPLITS", "Builder", "export", "generation_record", "verify"]
