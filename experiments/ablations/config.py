"""The base model of the architecture ablations: a 0.16M-parameter byte-level Llama.

Command:  lm sweep --config=experiments/ablations/config.py \
            --sweep=experiments/ablations/sweep.py --workdir=runs/ablations
          lm report --workdir=runs/ablations --output=experiments/ablations
Hardware: 2 CPU cores (shared), no accelerator.
Runtime:  about 30 s per run of 300 steps (16 x 128 bytes, 614k tokens) on 2 idle cores;
          21 runs (7 variants x 3 seeds) in the README's measured wall time.
Result:   eval loss about 2.3 nats/byte for the baseline (experiments/ablations/README.md).
The base is Llama-style (RoPE, SwiGLU, GQA with 2 KV heads, untied embeddings, no z-loss);
each run of sweep.py changes one of these.
"""

from lm import config as config_lib


def get_config(arg: str | None = None):
  del arg
  config = config_lib.base_config()
  config.model.preset = "tiny"      # d_model 64, 2 layers, 4 heads, 2 KV heads, d_ff 256
  config.model.vocab_size = 320     # the byte tokenizer's 259 ids, rounded up
  config.model.max_seq_len = 128    # = train.seq_len: no unused rows of learned positions
  config.data.source = "builtin:stdlib"
  config.train.steps = 300
  config.train.batch_size = 16
  config.train.seq_len = 128
  config.train.lr = 3e-3
  config.train.warmup_steps = 30
  config.train.log_every = 25
  config.train.eval_every = 100
  config.train.checkpoint_every = 100
  return config_lib.lock(config)
