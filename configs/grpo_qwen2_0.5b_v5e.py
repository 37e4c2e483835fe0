"""GRPO of a Qwen2-0.5B-class model (0.49B parameters, 151,936-token vocabulary) on one 16 GB
accelerator (TPU v5e-1): the memory plan of issue 16, from `lm plan`.

Command:  lm plan --config=configs/grpo_qwen2_0.5b_v5e.py --accelerator=v5e --num_devices=1
          lm train --config=configs/grpo_qwen2_0.5b_v5e.py:hf:DIR --workdir=...   # on the v5e
          (`:hf:DIR` or `:WORKDIR` starts from an imported Qwen2-0.5B-Instruct, e.g. `lm fetch`ed
          and converted; without it the plan reads the qwen2-0.5b preset's shapes)
Hardware: one TPU v5e chip (16 GiB HBM). Not run: planned only (no accelerator here).
Plan:     14.2 of 16 GiB per chip (README.md, "RL memory plans", has lm plan's table). Full
          fine-tuning, float32 parameters and AdamW: the policy (1.84 GiB), its frozen
          reference (1.84), AdamW state (3.68) and gradients (3.68: x2 under grad_accum) stay
          resident. 4 prompts x 8 completions of up to 128 tokens after 128-token prompts
          (32 rollouts a step, 255 columns): the scoring pass's float32 logits (32 x 255 x
          151,936: 4.6 GiB) peak the rollout phase, the output layer's backward (3.1 GiB in
          micro-batches of 8 rows, grad_accum 4) the update phase; the bfloat16 KV cache is
          small (0.09 GiB), the unrolled copy of the policy (rl.rollout_layout) 1.84 GiB.
          Longer completions or more rollouts need LoRA or a smaller vocabulary.
"""

from lm import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.stage = "grpo"
  if arg:
    config.init_from = arg
  else:
    config.model.preset = "qwen2-0.5b"
    config.data.tokenizer = "byte"        # the plan needs shapes only; an import brings its own
  config.model.dtype = "bfloat16"
  config.model.remat = "full"
  config.data.source = "builtin:tasks"
  config.train.batch_size = 4             # prompts; x rl.group_size rollouts
  config.train.grad_accum = 4             # 32 rollouts in micro-batches of 8
  config.train.lr = 1e-6
  config.train.warmup_steps = 10
  config.rl.group_size = 8
  config.rl.max_prompt_len = 128
  config.rl.max_new_tokens = 128
  config.rl.reward = "exact,format"
  config.rl.reward_weights = "1.0,0.1"
  return config_lib.lock(config)
