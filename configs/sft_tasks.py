"""SFT of the quickstart model on the built-in instruction tasks (add, reverse, sort, lookup,
count, units: lm/data/tasks.py), scored on their held-out questions before and after.

Command:  lm train --config=configs/quickstart.py --workdir=runs/quickstart   # pre-train
          lm eval  --workdir=runs/quickstart                                # before SFT
          lm train --config=configs/sft_tasks.py --workdir=runs/sft_tasks
          lm eval  --workdir=runs/sft_tasks                                 # after SFT
          (`configs/sft_tasks.py:DIR` starts from the model in DIR instead of runs/quickstart)
Hardware: 2 CPU cores, no accelerator, no network.
Runtime:  RUNTIME
Result:   RESULT
The loss covers the assistant's tokens only (the answer and its <end_of_turn>); the user's
question and the role tokens are context. Conversations are packed whole into rows.
"""

from lm import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.stage = "sft"
  config.init_from = arg or "runs/quickstart"   # its model and tokenizer (quickstart: byte)
  config.model.remat = "dots"
  config.data.source = "builtin:tasks"
  config.train.steps = 300
  config.train.batch_size = 32
  config.train.seq_len = 128
  config.train.lr = 1e-3
  config.train.warmup_steps = 20
  config.train.log_every = 10
  config.train.eval_every = 100
  config.train.eval_batches = 4
  config.train.checkpoint_every = 100
  return config_lib.lock(config)
