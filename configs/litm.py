"""Lost in the middle, trained here: SFT of the quickstart model at a 576-token context on
key-value retrieval in the format of `lm eval --limits=lost_in_the_middle` (the answer at a
uniformly random line of 2-16 lines), then that eval, by answer position and context length.

Command:  python experiments/limits/kv_data.py runs/litm/kv.jsonl --max_pairs=16 --restate
          lm train --config=configs/litm.py --workdir=runs/litm/model
          lm eval --workdir=runs/litm/model --output=runs/litm/litm.json \
              --limits=lost_in_the_middle:pairs=4+8+16:positions=5:items=20
          (`configs/litm.py:DIR` starts from the model in DIR instead of runs/quickstart;
          the workdir runs/quickstart must hold the quickstart model: configs/quickstart.py)
Hardware: 2 CPU cores, no accelerator, no network.
Runtime:  600 steps of 4 x 576 tokens (1.4M tokens): 4.9 CPU-minutes; measured 25:43 wall on
          2 cores shared with other jobs (load average 10-30). The eval: about a minute.
Result:   no retrieval learned: held-out loss per answer token 2.241 (step 100) -> 2.218
          (step 600), the bound of copying nothing (12 ln 16 / 15 = 2.218: twelve random hex
          digits); greedy replies "dddddd: dddddd"; lost_in_the_middle 0% at every position
          of 4, 8 and 16 pairs (experiments/limits/README.md). Losses are deterministic.
Each record is one context and 4 questions (4 user/assistant turns), each answered with the
key's line ("key: value"); the loss covers the answers only. The quickstart preset's RoPE
allows 1024 positions; it was pre-trained at 128.
"""

from lm import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.stage = "sft"
  config.init_from = arg or "runs/quickstart"   # its model and tokenizer (quickstart: byte)
  config.model.remat = "dots"
  config.data.source = "jsonl:runs/litm/kv.jsonl"
  config.data.eval_documents = 64
  config.train.steps = 600
  config.train.batch_size = 4
  config.train.seq_len = 576
  config.train.lr = 3e-3
  config.train.warmup_steps = 30
  config.train.log_every = 10
  config.train.eval_every = 100
  config.train.checkpoint_every = 50
  return config_lib.lock(config)
