"""Constitutional AI with the paper's settings (Bai et al. 2022) on an imported 0.5B-8B model:
16 principles (constitutions/default.json), 4 revisions per prompt with few-shot
demonstrations, soft labels from the option log-probs with chain of thought clamped to
40-60%, ensembled over principles; then a preference model and RL (GRPO here; the paper used
PPO), or DPO.

Command:  lm convert --from_hf=DIR --workdir=runs/base         # the helpful model, imported
          lm constitutional --config=configs/cai/paper.py:llama3-8b --workdir=runs/cai8b \
            --config.cai.policy=runs/base --config.cai.prompts=red_team.jsonl \
            --config.cai.helpful_data=jsonl:helpful.jsonl
          lm plan --config=configs/cai/paper.py:llama3-8b,sft --accelerator=v5p-32
          (the arg: a preset (llama3-8b, qwen2-0.5b, ...) and, for `lm plan`, one step:
          sft, preference_model, dpo or rl returns that step's training config)
Hardware: llama3-8b: a v5p-32 slice (16 chips, FSDP); qwen2-0.5b: one 80 GB GPU.
Runtime:  not measured here (no accelerator); plans: experiments/constitutional/README.md.
Red-team prompts (cai.prompts) and helpfulness conversations (cai.helpful_data) are yours:
the paper used 182,831 red-team prompts (42k written by people, the rest by few-shot
generation) and the helpful model's own samples on helpfulness prompts.
"""

from lm import config as config_lib
from lm.constitutional import config as cai_config


def get_config(arg: str | None = None):
  preset, _, step = (arg or "llama3-8b").partition(",")
  config = cai_config.pipeline_config()
  cai = config.cai
  cai.constitution = "default"
  cai.world = False
  cai.prompts = "red_team.jsonl"
  cai.helpful_data = "jsonl:helpful.jsonl"
  cai.num_prompts = 180_000
  cai.revisions = 4
  cai.few_shot = -1                       # all three demonstrations
  cai.max_new_tokens = 256
  cai.temperature = 1.0
  cai.batch_size = 256
  cai.helpful_ratio = 1.0
  cai.ensemble = 16                        # every principle judges every pair
  cai.chain_of_thought = True
  cai.clamp_low, cai.clamp_high = 0.4, 0.6
  cai.cot_tokens = 128
  cai.eval_red_team = 0
  small = preset in ("qwen2-0.5b", "gpt2-124m")
  for name in ("sft", "preference_model", "dpo", "rl"):
    c = config[name]
    c.model.preset = preset
    c.train.batch_size = 64 if name in ("preference_model", "dpo") else 128
    c.train.seq_len = 1024
    c.train.grad_accum = 16 if small else 4   # micro-batches of 8 (one GPU) / 2 per chip
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.model.loss_chunk = 512
    c.mesh.fsdp = 1 if small else -1
    c.mesh.data = -1 if small else 1
    c.data.tokenizer = "byte"              # replaced by init_from's tokenizer when run
    c.train.warmup_steps = 50
    c.train.checkpoint_every = 200
  config.sft.train.steps = 2000            # about 1 epoch of 180k revisions + helpfulness
  config.sft.train.lr = 1e-5
  config.preference_model.train.steps = 1000
  config.preference_model.train.lr = 1e-5
  config.dpo.train.steps = 1000
  config.dpo.train.lr = 5e-7
  config.dpo.dpo.beta = 0.1
  config.rl.train.steps = 500
  config.rl.train.lr = 1e-6
  # prompts; x rl.group_size completions. One GPU: 4 prompts (32 rollouts of 1,024 tokens;
  # the rollout phase scores every rollout at once, and 256 of them need 148 GiB of logits).
  config.rl.train.batch_size = 4 if small else 32
  config.rl.train.grad_accum = 4 if small else 2
  rl = config.rl.rl                        # rollouts as long as the SFT conversations
  rl.group_size = 8
  rl.max_prompt_len = 768
  rl.max_new_tokens = 256                  # = cai.max_new_tokens
  config.cai.skip = "helpful"
  if step:
    if step not in cai_config.TRAIN_STEPS or step == "helpful":
      raise ValueError(f"configs/cai/paper.py:{arg}: the step after the comma is one of "
                       "sft, preference_model, dpo, rl")
    return config_lib.lock(config[step])
  return config_lib.lock(config)
