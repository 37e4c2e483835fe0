"""Constitutional AI in the synthetic world (lm/constitutional/world.py): a helpful-only model
that reveals secrets, repeats banned words and answers off-topic questions, taught to keep
the three rules of constitutions/synthetic.json by its own critiques and its own feedback.

Command:  python -m lm constitutional --config=configs/cai/synthetic.py --workdir=runs/cai
          (one step: `python -m lm constitutional critique ...`; skip steps with
          --config.cai.skip=rl,preference_model; a helpful model trained before:
          --config.cai.policy=runs/cai/helpful/model)
Hardware: 2 CPU cores, no accelerator, no network.
Runtime:  the helpful model ~47 min wall for 400 steps (stopped there; 800 set here), the
          rest ~13-20 min, on 2 cores shared with other jobs (noisy).
Result:   held-out violation rate / exact match: helpful-only 77.3% / 42.5%, SL-CAI
          13.7% / 52.5%, RL-CAI via PM + GRPO 9.0% / 50.0%, via DPO 5.3% / 43.0%
          (experiments/constitutional/README.md: the table, examples, the learning rates
          of GRPO and DPO chosen after one earlier run).
The helpful-only model: 0.87M parameters, byte-level, 800 SFT steps from scratch on 24k world
records (answers, critique -> revision rounds, comparisons); every later step starts from
the step before (SL-CAI from it, DPO and the preference model from SL-CAI).
"""

from lm import config as config_lib
from lm.constitutional import config as cai_config


def _model(config):
  config.model.preset = "quickstart"   # byte-level; shrunk below to 0.87M parameters
  config.model.d_model = 128
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.num_kv_heads = 2
  config.model.d_ff = 384
  config.model.max_seq_len = 512


def get_config(arg: str | None = None):
  del arg
  config = cai_config.pipeline_config()
  cai = config.cai
  cai.constitution = "synthetic"
  cai.world = True
  cai.prompts = "world"
  cai.helpful_data = "world"
  cai.num_prompts = 384
  cai.revisions = 3
  cai.few_shot = 0
  cai.max_new_tokens = 32
  cai.batch_size = 128
  cai.helpful_ratio = 1.0
  cai.ensemble = 1
  cai.helpful_preferences = "world"     # benign answers over refusals and wrong answers

  h = config.helpful
  _model(h)
  h.train.steps = 800
  h.train.batch_size = 32
  h.train.seq_len = 256
  h.train.lr = 3e-3
  h.train.warmup_steps = 30
  h.train.eval_every = 200
  h.train.checkpoint_every = 100
  h.data.eval_documents = 200

  for step, steps, lr in (("sft", 60, 1e-3), ("preference_model", 60, 1e-3),
                          ("dpo", 60, 1e-4), ("rl", 40, 5e-5)):
    c = config[step]
    c.train.steps = steps
    c.train.batch_size = 16
    c.train.seq_len = 96          # a pair side: prompt <= 40 bytes, reply <= 32 tokens
    c.train.lr = lr
    c.train.warmup_steps = 5
    c.train.eval_every = steps
    c.train.checkpoint_every = 20
  config.sft.train.seq_len = 128   # rows packed with two or three conversations
  config.dpo.dpo.beta = 0.1
  rl = config.rl.rl
  rl.group_size = 4
  rl.max_prompt_len = 48
  rl.max_new_tokens = 24
  rl.beta = 0.04
  config.rl.train.batch_size = 8        # prompts, x 4 completions
  config.dpo.train.weight_decay = 0.0
  return config_lib.lock(config)
