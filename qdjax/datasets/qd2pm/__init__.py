"""The ``qd2pm`` TFDS dataset (importing this registers it with TFDS)."""

from qdjax.datasets.qd2pm.qd2pm_dataset_builder import SPLITS, Builder, generation_record

__all__ = ["SPLITS", "Builder", "generation_record"]
