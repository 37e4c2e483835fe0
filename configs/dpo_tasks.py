"""DPO of the SFT model (configs/sft_tasks.py) on the preference world (`builtin:preferences`):
the policy learns the raters' preferences directly, held near its frozen starting point.

Command:  python -m lm train --config=configs/sft_tasks.py --workdir=runs/sft_tasks  # first
          python -m lm train --config=configs/dpo_tasks.py --workdir=runs/dpo_tasks
          python experiments/preference/evaluate.py runs/dpo_tasks runs/sft_tasks  # true reward
          python experiments/preference/likelihood_accuracy.py runs/dpo_tasks runs/sft_tasks
          python experiments/preference/plot.py runs/dpo_tasks   # loss, accuracy, margin
          (`configs/dpo_tasks.py:DIR` starts from the model in DIR instead of runs/sft_tasks;
          --config.dpo.loss=ipo|hinge, --config.dpo.beta=0.1, --config.dpo.label_smoothing,
          --config.dpo.rpo_alpha, --config.dpo.precompute_reference=True: no frozen copy)
Hardware: 2 CPU cores, no accelerator, no network.
Runtime:  150 steps of 32 pairs (64 rows, policy and reference) x 64 tokens on the 1.70M SFT
          model: about 1.5 CPU-minutes; measured 19 minutes wall on 2 cores shared with a dozen
          other jobs (load average 27-32); evaluate.py 2.5 minutes wall.
Result:   from /work/runs/sft_tasks (greedy replies to the 300 held-out prompts: true reward
          1.327, exact match 66.3%): held-out rewards/accuracies 89.0% at step 50 -> 91.3% at
          step 150, rewards/margins 6.14, loss 0.693 -> 0.194; the greedy replies' true
          reward did NOT rise: 1.260 (exact match 63.0%: add 8 -> 10%, lookup 52 -> 56%,
          sort 98 -> 84%, count 40 -> 28%, reverse and units 100%), KL(DPO || SFT) 0.44 nats
          per reply (evaluate.py; experiments/preference/dpo_tasks_eval.json). DPO learns
          which answers are right (add, lookup) but the pairs whose rejected reply is the
          chosen one plus a suffix push p(end of turn) up after any item, and lists end
          early; count falls too. beta=0.5 (below) stays closer (KL 0.13) and loses less.
          The history, each run from that SFT model with these settings:
            pairs of the first version (a wrong reply chosen over a correct one with a banned
              word; the 0.57M SFT model of the old docstring): true reward 0.787 -> 0.733;
            minimal pairs, banned word after a space ("432 honestly"): held-out
              rewards/accuracies 93.3%, margins 5.76, and the policy's likelihood prefers the
              correct reply of a held-out correct-vs-wrong pair more often (88.8% -> 92.9%),
              yet the greedy true reward fell 1.327 -> 1.193 (exact match 59.7%; sort 98% ->
              72%), KL 0.84: the sorted lists were cut short ("0 4 5" for "0 4 5 9"). Those
              pairs lowered p(" " | a complete answer), and a space follows every list item;
            the same with dpo.beta=0.5: true reward 1.280 (exact match 64.0%; sort 92%,
              lookup 54%, count 30%), KL 0.13, rewards/accuracies 95.3%, margins 10.6;
            the banned word after a comma, as now, but a wrong number below 10 still always
              above the answer: true reward 1.253 (exact match 62.7%: add 8 -> 12%, lookup
              52 -> 58%, sort 98 -> 78%, count 40 -> 30%), KL 0.80, rewards/accuracies 93.3%.
            dpo.rpo_alpha=1 (an NLL term on the chosen reply) was stopped at step 80: a
              quarter of the chosen replies are padded ("432, Glad to help!"), which the SFT
              model finds very unlikely (~20 nats a word), so that term teaches padding.
The reference is the starting model, a frozen copy in the train state (+1x parameters, no
optimizer state), or with LoRA the base with the adapters off, or with
dpo.precompute_reference its log-probs computed once; log-probs are summed over the reply
tokens only.
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
