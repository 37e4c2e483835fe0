"""SFT of the quickstart model on the built-in instruction tasks (add, reverse, sort, lookup,
count, units: lm/data/tasks.py), scored on their held-out questions before and after.

Command:  lm train --config=configs/quickstart.py --workdir=runs/quickstart   # pre-train
          lm eval  --workdir=runs/quickstart                                # before SFT
          lm train --config=configs/sft_tasks.py --workdir=runs/sft_tasks
          lm eval  --workdir=runs/sft_tasks                                 # after SFT
          (`configs/sft_tasks.py:DIR` starts from the model in DIR instead of runs/quickstart)
Hardware: 2 CPU cores, no accelerator, no network.
Runtime:  600 steps of 32 x 128 tokens (about 2 epochs of the 30k training conversations):
          4.5 CPU-minutes; measured 18.5 minutes wall on 2 cores shared with five other jobs
          (the quickstart takes 2.3 minutes wall on 2 idle cores for 3.9 CPU-minutes, so
          expect about 3 minutes there). `lm eval --source=` takes 6-60 s.
Result:   SFT loss (per assistant token) 3.25 at step 10 -> 0.19 at step 600; held-out eval
          loss 0.19 (1,346 assistant tokens). Held-out exact match (`lm eval`, 50 questions
          per task, greedy):

            task      before SFT   after SFT
            add           0%           8%
            reverse       0%         100%
            sort          0%          98%
            lookup        0%          52%
            count         0%          40%
            units         0%         100%
            mean          0%        66.3%

          (multiple-choice accuracy 33.0% -> 83.7%). Measured with init_from= a quickstart
          run of this repository; losses are deterministic, wall times are noisy.
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
  config.train.checkpoint_every = 100
  return config_lib.lock(config)
