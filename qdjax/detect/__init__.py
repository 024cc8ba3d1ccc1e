"""The detector network: its architecture, training targets and decoding, training on simulated
batches, checkpoints, inference and the shipped models.
"""
