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
          model: about 1.5 CPU-minutes; measured 6.5 minutes wall (391 s; 2026-11-30, 2 cores
          shared with other jobs: noisy), evaluate.py 38 s.
Result:   from /work/runs/sft_tasks (greedy replies to the 300 held-out prompts: true reward
          1.327, exact match 66.3%), this config (sigmoid, beta 0.1, dpo.rpo_alpha 1, lr 1e-4):
          the greedy replies' true reward ROSE to 1.353 (exact match 67.7%: add 8 -> 14%,
          lookup 52 -> 58%, sort 98 -> 100%, count 40 -> 34%, reverse and units 100%; no reply
          padded, none with a banned word), KL(DPO || SFT) 0.062 nats per reply; held-out
          rewards/accuracies 87.0% (step 50) -> 88.7% (150), rewards/margins 1.84,
          rewards/chosen -0.36, logps/chosen -66.2, nll_loss 2.645 per token (evaluate.py;
          experiments/preference/dpo_tasks_eval.json). The rise is small: 4 more right answers
          of 300 (one prompt is 0.0067 of true reward), and it does NOT hold across seeds: the
          same config with --config.seed=1 (another order of the pairs) gives 1.287 (exact
          match 64.3%: add 6%, lookup 48%, count 34%, sort 98%), KL 0.025, rewards/accuracies
          87.0%; with --config.seed=2: 1.360 (exact match 68.0%: add 14%, lookup 52%, count
          42%, sort 100%), KL 0.027, rewards/accuracies 87.0%. Three seeds: 1.353 / 1.287 /
          1.360, mean 1.333 against the SFT model's 1.327 (train 2.5-6.5 minutes wall each).
          Longer does not help: seed 1 with --config.train.steps=300 gives 1.300 (exact match
          65.0%), KL 0.039, rewards/accuracies 88.3% (5 minutes wall).
          So from this clean SFT model the goal (DPO raises the greedy true reward) is not
          reliably met: RPO stops the fall that DPO alone causes, and the change is within
          seed noise. This model never pads and never says a banned word, which leaves only
          correctness to gain; from an SFT model that does (configs/dpo_demos.py) the same
          DPO raises it 0.653 -> 1.367-1.400 over three seeds.
          The same with train.lr=3e-4: 1.333 (exact match 66.7%: add 8%, lookup 60%, count 36%,
          sort 100%, units 96%), KL 0.17, rewards/accuracies 89.0%.
          Correct-vs-wrong pairs alone (--config.data.source=builtin:preferences:kinds=correct;
          about 1 minute wall each on the quiet machine) are worse: with RPO 1.207 / 1.174
          (seeds 0 / 1), KL 44, held-out rewards/accuracies 48-51%: the policy drifts far from
          the reference (reversed and sorted lists run on: reverse 100 -> 78%, sort 98 -> 82%);
          without it (--config.dpo.rpo_alpha=0) 1.293 / 1.204 / 1.319 (seeds 0 / 1 / 2), KL
          0.26 / 0.80 / 0.49, rewards/accuracies 75-78%.
          Without RPO (dpo.rpo_alpha=0) the true reward FELL: 1.260 at beta 0.1 (exact match
          63.0%: add 8 -> 10%, lookup 52 -> 56%, sort 98 -> 84%, count 40 -> 28%), KL 0.44,
          rewards/accuracies 91.3%, margins 6.14; 1.280 at beta 0.5 (pairs with the banned
          word after a space), KL 0.13. DPO learns which answers are right (add, lookup) but
          pushes both replies' likelihood down (likelihood displacement): the pairs whose
          rejected reply is the chosen one plus a suffix raise p(end of turn) after any item,
          and lists end early. The NLL term keeps the chosen replies (5 in 6 of them a bare
          correct answer) likely: sorted lists stay whole (100%).
          The history, each run from that SFT model with these settings:
            pairs of the first version (a wrong reply chosen over a correct one with a banned
              word; the 0.57M SFT model of the old docstring): true reward 0.787 -> 0.733;
            minimal pairs, banned word after a space ("432 honestly"): held-out
              rewards/accuracies 93.3%, margins 5.76, and the policy's likelihood prefers the
              correct reply of a held-out correct-vs-wrong pair more often (88.8% -> 92.9%),
              yet the greedy true reward fell 1.327 -> 1.193 (exact match 59.7%; sort 98% ->
              72%), KL 0.84: the sorted lists were cut short ("0 4 5" for "0 4 5 9"). Those
              pairs lowered p(" " | a complete answer), and a space follows every list item;
            the banned word after a comma, as now, but a wrong number below 10 still always
              above the answer: true reward 1.253 (exact match 62.7%), KL 0.80.
          A worry that RPO teaches padding (a sixth of the chosen replies are padded, "432,
          Glad to help!", ~20 nats a word to the SFT model) did not come true at alpha 1:
          the concise and banned pairs push the comma down faster.
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
  config.dpo.rpo_alpha = 1.0              # the chosen reply's NLL: without it the true reward falls
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
