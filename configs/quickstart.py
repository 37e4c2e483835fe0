"""Quickstart: a 1.6M-parameter byte-level Llama trained on the built-in corpus.

Command:  lm train --config=configs/quickstart.py --workdir=runs/quickstart
          lm sample --workdir=runs/quickstart --prompt="The "
Hardware: 2 CPU cores, no accelerator, no network.
Runtime:  about 4 minutes (300 steps of 32 x 128 bytes, ~1.2M tokens).
Result:   eval loss about 1.75 nats/byte (bits/byte about 2.5) at step 300; the sample is
          English-like text with real words.
Running the command again in the same workdir resumes from the last checkpoint.
"""

from lm import config as config_lib


def get_config(arg: str | None = None):
  del arg
  config = config_lib.base_config()
  config.model.preset = "quickstart"
  config.data.source = "builtin:stdlib"
  config.train.steps = 300
  config.train.batch_size = 32
  config.train.seq_len = 128
  config.train.lr = 3e-3
  config.train.warmup_steps = 30
  config.train.log_every = 10
  config.train.eval_every = 100
  config.train.eval_batches = 4
  config.train.checkpoint_every = 100
  return config_lib.lock(config)
