"""DPO of the SFT model (configs/sft_tasks.py) on the preference world (`builtin:preferences`):
the policy learns the raters' preferences directly, held near its frozen starting point.

Command:  python -m lm train --config=configs/sft_tasks.py --workdir=runs/sft_tasks  # first
          python -m lm train --config=configs/dpo_tasks.py --workdir=runs/dpo_tasks
          python experiments/preference/plot.py runs/dpo_tasks   # loss, accuracy, margin
          (`configs/dpo_tasks.py:DIR` starts from the model in DIR instead of runs/sft_tasks;
          --config.dpo.loss=ipo|hinge, --config.dpo.beta=0.1, --config.dpo.label_smoothing)
Hardware: 2 CPU cores, no accelerator, no network.
Runtime:  measured from a small SFT model instead of runs/sft_tasks (not available here):
            python -m lm train --config=configs/tiny.py --workdir=runs/sft_tiny \
              --config.stage=sft --config.data.source=builtin:tasks \
              --config.model.d_model=128 --config.model.num_layers=3 --config.train.steps=400 \
              --config.train.batch_size=32 --config.train.seq_len=64 --config.train.lr=3e-3 \
              --config.train.warmup_steps=20 --config.data.eval_documents=200   # 2.1 min wall
            python -m lm train --config=configs/dpo_tasks.py:runs/sft_tiny --workdir=runs/dpo_tasks
          150 DPO steps: 3.0 minutes wall on 2 cores shared with other jobs (0.8 CPU-minutes).
Result:   held-out (300 pairs) rewards/accuracies 0 at the start (policy = reference) ->
          77.3% at step 50 -> 77.7% at step 150; rewards/margins 0.80; held-out DPO loss
          0.509 (log 2 = 0.693 at the start). The true reward of greedy replies to the 300
          held-out prompts did NOT rise: 0.787 (SFT) -> 0.733 (DPO), exact match 39.3% ->
          36.7%, with KL(DPO || SFT) = 0.69 nats per reply (experiments/preference/
          evaluate.py; sft_tiny_eval.json, dpo_tasks_eval.json). The SFT policy already
          replies tersely and without banned words, so two of the three kinds of pair teach
          it nothing it does; on correct-vs-wrong pairs the preferences are learnt by length
          as much as by correctness (the reward model shows the same: configs/reward_tasks.py).
The reference is the starting model, a frozen copy in the train state (+1x parameters, no
optimizer state); log-probs are summed over the reply tokens only.
"""

from lm import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.stage = "dpo"
  config.init_from = arg or "runs/sft_tasks"   # its model and tokenizer; also the reference
  config.model.remat = "dots"
  config.data.source = "builtin:preferences"
  config.dpo.loss = "sigmoid"
  config.dpo.beta = 0.1
  config.train.steps = 150
  config.train.batch_size = 32            # pairs (64 rows per forward pass, twice: the
  config.train.seq_len = 64               # policy and the reference)
  config.train.lr = 1e-4
  config.train.warmup_steps = 20
  config.train.weight_decay = 0.0
  config.train.log_every = 10
  config.train.eval_every = 50
  config.train.checkpoint_every = 50
  config.data.eval_documents = 0          # every held-out pair (300)
  return config_lib.lock(config)
