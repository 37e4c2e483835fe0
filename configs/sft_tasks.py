"""SFT of the quickstart model on the built-in instruction tasks (add, reverse, sort, lookup,
count, units: lm/data/tasks.py), scored on their held-out questions before and after.

Command:  lm train --config=configs/quickstart.py --workdir=runs/quickstart   # pre-train
          lm eval  --workdir=runs/quickstart                                # before SFT
          lm train --config=configs/sft_tasks.py --workdir=runs/sft_tasks
          lm eval  --workdir=runs/sft_tasks                                 # after SFT
          (`configs/sft_tasks.py:DIR` starts from the model in DIR instead of runs/quickstart)
Hardware: 2 CPU cores, no accelerator, no network.
Runtime:  600 steps of 32 x 128 tokens (about 2 epochs of the 30k training conversations):
          4.6 CPU-minutes; measured 24 minutes wall on 2 cores shared with five other jobs
          (the quickstart takes 2.3 minutes wall on 2 idle cores for 3.9 CPU-minutes, so
          expect about 3 minutes there). `lm eval` takes 15 s (2 minutes with perplexity).
Result:   SFT loss (per assistant token) 3.35 at step 10 -> 0.43 at step 600; held-out eval
          loss 0.47. Held-out exact match (`lm eval`, 50 questions per task, greedy):

            task      before SFT   after SFT
            add           0%           2%
            reverse       0%          96%
            sort          0%          80%
            lookup        0%           0%
            count         0%          44%
            units         0%          52%
            mean          0%        45.7%

          (multiple-choice accuracy 27.3% -> 81.0%). Measured with init_from=/tmp/qs-new, a
          quickstart run of this repository; losses are deterministic, wall times are noisy.
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
  config.train.steps = 600
  config.train.batch_size = 32
  config.train.seq_len = 128
  config.train.lr = 2e-3
  config.train.warmup_steps = 20
  config.train.log_every = 10
  config.train.eval_every = 100
  config.train.eval_batches = 4
  config.train.checkpoint_every = 100
  return config_lib.lock(config)
