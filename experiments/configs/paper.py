"""The study's sample budget: ~600k simulated frames (20 epochs of 29,838).

    python experiments/train.py --config=experiments/configs/paper.py --workdir=workdirs/paper

The study trained Keypoint R-CNN with SGD, learning rate 1e-3, batch 6. Ours keeps SGD
(Nesterov momentum) but with a larger batch, a warmup and a cosine decay: with batch 6 a
CPU step is dominated by per-step overhead, and the dense head trains stably at 0.01.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.batch_size = 32  # frames per step
  config.num_steps = 18750  # 600,000 frames, the study's 20 x 29,838 = 596,760
  config.warmup_steps = 500  # linear warmup
  config.validation_size = 2000  # frames per validation split (val_d1..3)
  config.log_every = 100  # steps between log records
  config.eval_every = 1000  # steps between validations (the study: once per epoch, ~930)
  config.checkpoint_every = 1000  # steps between checkpoints
  return config
