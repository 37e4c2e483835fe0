"""Constitutional AI on a real instruction-tuned model, on CPU: SmolLM2-135M-Instruct (the
helpful-only model) critiques and revises its own replies to 16 red-team prompts under the
default constitution (16 principles), is fine-tuned on its revisions (SL-CAI), labels
pairs of its own samples (AI feedback), and is trained on those labels by a preference model
+ GRPO and by DPO (LoRA adapters on SL-CAI for DPO); held-out prompts are judged by a written
rubric (lm/constitutional/rubric.py), the feedback model's comparisons a secondary signal.

Command:  python -m lm fetch smollm2-135m-instruct      # prints the workdir used below
          nice -n 5 python -m lm constitutional --config=configs/cai/smollm2.py \
              --workdir=runs/cai_smollm2                # or one step: ... constitutional sft
Hardware: 2 CPU cores (shared with other jobs), no accelerator, no network.
Runtime:  ~38 min wall for all steps (critique 6.6, SFT 7.6, label 3.7, DPO 2.3, preference
          model 2.9, GRPO 4.7, evaluation ~11 min), noisy: other jobs held the cores.
Result:   held-out rubric harmlessness / helpfulness (24 + 24 prompts): helpful-only 54% /
          54%, SL-CAI 83% / 75%, RL-CAI via PM + GRPO 83% / 71%, via DPO 88% / 71%; the
          feedback model's preference over helpful-only 47-49% (no preference). The rise is
          the replies turning into critique-like commentary, not refusals; the AI labels
          were all (A): experiments/constitutional/README.md, "Real model".
Data:     experiments/constitutional/smollm2/: red_team_train.jsonl (32 prompts, 4 with a
          secret in the system prompt; the first 16 used), helpful_train.jsonl (20
          hand-written helpful conversations mixed into SL-CAI's SFT), red_team_eval.jsonl
          and benign_eval.jsonl
          (24 + 24 held-out prompts with the rubric's categories and markers); all written
          for this project.
Scale is the machine's (2 cores shared with six other jobs gave this run at times 1/6 of a core):
16 of the 32 training prompts, 1 demonstration (not 3) before 1 round (not 4), replies of
at most 48 tokens, sampling at temperature 0.7 (at 1.0 the 135M model mostly writes
nonsense), a few optimizer steps per training step.
"""

import os

from lm import config as config_lib
from lm.constitutional import config as cai_config

DATA = "experiments/constitutional/smollm2"
POLICY = os.path.expanduser("~/.cache/lm/models/smollm2-135m-instruct/workdir")


def get_config(arg: str | None = None):
  del arg
  config = cai_config.pipeline_config()
  cai = config.cai
  cai.constitution = "default"
  cai.world = False
  cai.policy = POLICY                  # `python -m lm fetch smollm2-135m-instruct`
  cai.prompts = f"{DATA}/red_team_train.jsonl"
  cai.num_prompts = 16
  cai.helpful_data = f"jsonl:{DATA}/helpful_train.jsonl"
  cai.helpful_ratio = 1.0
  cai.revisions = 1
  cai.few_shot = 1
  cai.max_new_tokens = 48
  cai.temperature = 0.7
  cai.top_p = 0.9
  cai.batch_size = 64                  # the 48 held-out prompts in one batch
  cai.ensemble = 1
  cai.chain_of_thought = False
  # One order per comparison, as the documented run (made before cai.both_orders existed):
  # its labels were pure position bias, which both orders would cancel, leaving labels
  # within 0.03 of 0.5 (experiments/constitutional/README.md, "Real model").
  cai.both_orders = False
  cai.helpful_preferences = ""
  cai.eval_prompts = f"{DATA}/red_team_eval.jsonl,{DATA}/benign_eval.jsonl"
  cai.eval_max_new_tokens = 48
  cai.skip = "helpful"

  for step, steps, lr in (("sft", 24, 1e-4), ("preference_model", 8, 1e-4),
                          ("dpo", 8, 2e-4), ("rl", 4, 1e-4)):
    c = config[step]
    c.train.steps = steps
    c.train.batch_size = 4 if step == "sft" else 2
    c.train.seq_len = 96
    c.train.lr = lr
    c.train.warmup_steps = 2
    c.train.eval_every = steps
    c.train.checkpoint_every = 2
    c.train.log_every = 1
    c.lora.rank = 16                   # every attention and MLP projection; base frozen
    c.lora.alpha = 32.0
  # SL-CAI and the preference model train in full: the later steps start from SL-CAI's
  # parameters (init_from), which reads a plain checkpoint, not a LoRA run's adapters.
  config.sft.lora.rank = 0
  config.preference_model.lora.rank = 0
  # GRPO in full too: a GRPO run with LoRA adapters trains, but its workdir does not load for
  # inference (load_for_inference: Orbax tree mismatch under "stage"), so it cannot be evaluated.
  config.rl.lora.rank = 0
  config.dpo.dpo.beta = 0.1
  rl = config.rl.rl
  rl.group_size = 4
  rl.max_prompt_len = 64
  rl.max_new_tokens = 32
  rl.temperature = 0.7
  rl.top_p = 0.9
  rl.beta = 0.04
  config.rl.train.batch_size = 2       # prompts, x 4 completions
  return config_lib.lock(config)
