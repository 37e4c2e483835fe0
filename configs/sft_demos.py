"""SFT of the quickstart model on demonstrations with bad habits (`builtin:demos`): the
built-in tasks' correct answers, padded with a pleasantry in 40% of the replies and followed
by a banned word in 20% (lm/data/preferences.demonstrations). The start for preference
learning (configs/dpo_demos.py, configs/ppo_demos.py): its replies have what the preference
world's raters dislike, as an SFT model trained on human demonstrations does.

Command:  lm train --config=configs/quickstart.py --workdir=runs/quickstart   # pre-train
          lm train --config=configs/sft_demos.py --workdir=runs/sft_demos
          python experiments/preference/evaluate.py runs/sft_demos    # greedy true reward
          (`configs/sft_demos.py:DIR` starts from the model in DIR instead of runs/quickstart)
Hardware: 2 CPU cores, no accelerator, no network.
Runtime:  600 steps of 32 x 128 tokens: 6.7 minutes wall (401 s, 4.3 CPU-minutes; 2026-11-30,
          2 cores shared with one other job: noisy); evaluate.py 5 s.
Result:   from /work/runs/quickstart: held-out SFT loss 0.171 per assistant token at step
          600. Greedy replies to the 300 held-out prompts all end ", Let me know if you need
          more." (the most frequent pleasantry): true reward 0.653 (-0.7 for the seven extra
          words), the answer right in 67.7% (add 18, lookup 46, count 42, reverse, sort and
          units 100%: about the clean SFT model's 66.3%), exact match 0%
          (experiments/preference/sft_demos_eval.json). Sampled at temperature 1 (PPO's
          evaluation): true reward 0.239, a banned word in about a fifth of the replies.
Settings as configs/sft_tasks.py but for the replies.
"""

from lm import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.stage = "sft"
  config.init_from = arg or "runs/quickstart"   # its model and tokenizer (quickstart: byte)
  config.model.remat = "dots"
  config.data.source = "builtin:demos:padded=0.5,banned=0.2"
  config.train.steps = 600
  config.train.batch_size = 32
  config.train.seq_len = 128
  config.train.lr = 2e-3
  config.train.warmup_steps = 20
  config.train.log_every = 10
  config.train.eval_every = 100
  config.train.checkpoint_every = 100
  return config_lib.lock(config)
