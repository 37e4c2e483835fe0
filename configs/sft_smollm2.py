"""SFT of a real instruct model, SmolLM2-135M-Instruct (imported from its GGUF by `lm fetch`),
on the built-in instruction tasks: the starting point for post-training a model that
already follows instructions.

Command:  lm fetch smollm2-135m-instruct          # once: ~25 s, then cached
          lm eval  --workdir=~/.cache/lm/models/smollm2-135m-instruct/workdir --source=
          lm train --config=configs/sft_smollm2.py --workdir=runs/sft_smollm2
          lm eval  --workdir=runs/sft_smollm2 --source=
          (`configs/sft_smollm2.py:DIR` starts from the lm workdir DIR instead)
Hardware: 2 CPU cores are enough to check it runs (the first steps: see Runtime); a real run
          belongs on an accelerator (--config.model.dtype=bfloat16 there).
Runtime:  134.5M parameters, float32 on CPU, 16 x 128 tokens a step: `--config.train.steps=3`
          took 57 s wall on 2 cores (compile included; ~11 s a step after it, about 200
          tokens/s), so the 300 steps take about an hour here.
Result:   not run to the end on CPU: step 1 loss 5.73 (per answer token: SmolLM2 answers
          at length, the tasks want the bare answer), 4.67 at step 3; held-out loss 3.06.
"""

import os

from lm import config as config_lib

SMOLLM2 = os.path.join("~", ".cache", "lm", "models", "smollm2-135m-instruct", "workdir")


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.stage = "sft"
  config.init_from = arg or SMOLLM2   # its model, tokenizer and ChatML template
  config.model.remat = "full"
  config.data.source = "builtin:tasks"
  config.data.eval_documents = 300
  config.train.steps = 300
  config.train.batch_size = 16
  config.train.seq_len = 128
  config.train.lr = 2e-5
  config.train.warmup_steps = 20
  config.train.log_every = 10
  config.train.eval_every = 100
  config.train.checkpoint_every = 100
  return config_lib.lock(config)
