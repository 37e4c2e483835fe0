"""Regenerates tests/constitutional/data/world_helpful: the synthetic world's helpful-only model
at test size, the starting point of the reduced end-to-end test (test_end_to_end.py).

    python -m tests.constitutional.make_world_model [--workdir=runs/world_tiny] [--steps=N]

It is the `helpful` step of configs/cai/synthetic.py (lm/constitutional/world.py's records,
SFT from scratch) with a smaller model (MODEL: ~0.1M parameters), then its parameters alone,
stored in bfloat16 (half the bytes; the engine and `init_from` read them back as float32),
with the config.json that names the model. Training is deterministic given the seed, but a
rerun on other hardware may differ in the last bits, and with it the test's numbers: rerun
the test after regenerating.
"""

import argparse
import json
import os
import shutil

import jax
import jax.numpy as jnp

OUT = os.path.join(os.path.dirname(__file__), "data", "world_helpful")
MODEL = {"d_model": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "d_ff": 192,
         "max_seq_len": 256}


def helpful_config(steps: int, taught: str = "same"):
  # pylint: disable=import-outside-toplevel
  from configs.cai import synthetic
  config = synthetic.get_config()
  config.unlock()
  config.helpful.model.update(MODEL)
  config.helpful.train.steps = steps
  config.helpful.train.batch_size = 32
  config.helpful.train.seq_len = 256
  config.helpful.train.lr = 5e-3
  config.helpful.train.warmup_steps = 50
  config.helpful.train.eval_every = steps
  config.helpful.train.checkpoint_every = 200
  config.cai.world_records = 24000
  config.cai.world_taught = taught
  config.cai.skip = "critique,sft,label,preference_model,rl,dpo,evaluate"
  return config


def export(workdir: str, out: str = OUT) -> None:
  """The newest parameters of the training `workdir`, in bfloat16, as an import writes them
  (config.json + params/)."""
  # pylint: disable=import-outside-toplevel
  from lm.train import checkpoint
  config, _, params = checkpoint.load_for_inference(workdir)
  if os.path.exists(out):
    shutil.rmtree(out)
  os.makedirs(out)
  checkpoint.save_params(out, jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params))
  saved = {k: config[k] for k in ("model", "data", "stage")}
  saved["data"] = {"tokenizer": config.data.tokenizer}
  with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
    json.dump(saved, f, indent=1, sort_keys=True, default=lambda v: v.to_dict())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/world_tiny")
  parser.add_argument("--steps", type=int, default=800)
  parser.add_argument("--taught", default="same", help="cai.world_taught")
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args()
  # pylint: disable=import-outside-toplevel
  from lm.constitutional import pipeline
  pipeline.Pipeline(helpful_config(args.steps, args.taught), args.workdir).run("helpful")
  export(os.path.join(args.workdir, "helpful", "model"), args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
