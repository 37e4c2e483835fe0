"""Does the FROZEN SFT decoder already say, at one token, whether a reply is correct? A linear
probe at each read position a reward head could use.

    python experiments/preference/probe.py [/work/runs/sft_tasks]

For 3000 training and the 98 held-out correct-vs-wrong pairs of the preference world
(lm/data/preferences.py), the decoder's final hidden states [D] of both replies at: the
end-of-turn token (`reward.read_at="end_of_turn"`), the reply's last token ("reply_end"), the
one before it, and the mean over the reply's tokens. A logistic regression on
h_chosen - h_rejected (a Bradley-Terry model with a linear head on frozen features, features
standardised, a little L2) is fit on the training pairs; prints train and held-out accuracy
per position. Near 50% held out means a head cannot read correctness there without
fine-tuning the decoder.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from lm.data import preferences, tokenizer as tokenizer_lib
from lm.model import Decoder
from lm.stages import pairs
from lm.train.checkpoint import load_for_inference

POSITIONS = ("end_of_turn", "reply_end", "before_reply_end", "mean")


def features(workdir: str, records: list[dict]) -> dict[str, np.ndarray]:
  """{position: h_chosen - h_rejected [N, D]}."""
  _, model_config, params = load_for_inference(workdir)
  decoder = Decoder(model_config.replace(remat="none"))
  hidden = jax.jit(lambda p, x: decoder.apply({"params": p}, x, hidden=True))   # [B, T, D]
  row = pairs.PairRow(tokenizer_lib.get("byte"), 64, "cut")
  out = {k: [] for k in POSITIONS}
  for start in range(0, len(records), 128):
    rows = [row(r) for r in records[start:start + 128]]
    sides = []
    for side in pairs.SIDES:
      x = np.stack([r[f"{side}_inputs"] for r in rows])
      last = np.array([r[f"{side}_last"] for r in rows])                        # end of turn
      reply = np.zeros_like(x, np.float32)    # the reply's tokens: targets shifted by one
      reply[:, 1:] = np.stack([r[f"{side}_loss_mask"] for r in rows])[:, :-1]
      h = np.asarray(hidden(params, jnp.asarray(x)), np.float32)
      b = np.arange(len(rows))
      sides.append({"end_of_turn": h[b, last], "reply_end": h[b, last - 1],
                    "before_reply_end": h[b, last - 2],
                    "mean": (h * reply[..., None]).sum(1) / reply.sum(1, keepdims=True)})
    for k in POSITIONS:
      out[k].append(sides[0][k] - sides[1][k])
  return {k: np.concatenate(v) for k, v in out.items()}


def probe(train: np.ndarray, held_out: np.ndarray, steps: int = 3000, lr: float = 0.05,
          l2: float = 1e-3) -> tuple[float, float]:
  scale = train.std(0) + 1e-6
  x, x_held_out = jnp.asarray(train / scale), jnp.asarray(held_out / scale)
  loss = lambda w: jnp.mean(jax.nn.softplus(-(x @ w))) + l2 * jnp.sum(w * w)
  grad = jax.jit(jax.grad(loss))
  w = jnp.zeros(x.shape[1])
  for _ in range(steps):
    w = w - lr * grad(w)
  return float(jnp.mean(x @ w > 0)), float(jnp.mean(x_held_out @ w > 0))


def main(workdir: str = "/work/runs/sft_tasks") -> dict:
  train = [r for r in preferences.records("train") if r["kind"] == "correct"][:3000]
  held_out = [r for r in preferences.records("eval") if r["kind"] == "correct"]
  f_train, f_held_out = features(workdir, train), features(workdir, held_out)
  return {k: dict(zip(("train", "held_out"), probe(f_train[k], f_held_out[k])))
          for k in POSITIONS}


if __name__ == "__main__":
  print(json.dumps(main(*sys.argv[1:2]), indent=1))
