"""Tiny training config for tests: seconds on a CPU. The default config, shrunk."""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "tiny"  # 2k parameters
  config.batch_size = 8  # frames per step
  config.num_steps = 6  # steps
  config.warmup_steps = 2  # linear warmup
  config.learning_rate = 0.01  # peak learning rate
  config.validation_size = 16  # frames per validation split
  config.log_every = 2  # steps between log records
  config.eval_every = 3  # steps between validations
  config.checkpoint_every = 2  # steps between checkpoints
  config.progress = False  # no progress bar in test logs
  return config
