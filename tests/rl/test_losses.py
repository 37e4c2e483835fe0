"""GRPO math (lm/rl/losses.py) against an independent PyTorch computation written as TRL's
GRPOTrainer writes it (trl/trainer/grpo_trainer.py: _compute_loss, advantages), on fixed
random inputs."""

import numpy as np
import pytest
import torch

from lm.rl import losses

B, G, N = 12, 4, 7  # 3 prompts x 4 completions, 7 tokens


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  logps = rng.normal(-2.0, 0.5, (B, N)).astype(np.float32)
  return {"logps": logps,
          "old": (logps + rng.normal(0, 0.3, (B, N))).astype(np.float32),
          "ref": (logps + rng.normal(0, 0.3, (B, N))).astype(np.float32),
          "rewards": rng.integers(0, 3, B).astype(np.float32),
          "mask": (np.arange(N)[None] < rng.integers(1, N + 1, B)[:, None]).astype(np.float32)}


def torch_advantages(rewards, scale):
  r = torch.tensor(rewards)
  mean = r.view(-1, G).mean(dim=1).repeat_interleave(G)
  if scale == "batch":
    std = r.std().expand_as(r)
  else:
    std = r.view(-1, G).std(dim=1).repeat_interleave(G)
  advantages = r - mean
  if scale != "none":
    advantages = advantages / (std + 1e-4)
  return advantages.numpy()


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_equal_trl(inputs, scale):
  ours = np.asarray(losses.group_advantages(inputs["rewards"], G, scale))
  np.testing.assert_allclose(ours, torch_advantages(inputs["rewards"], scale), atol=1e-6)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_estimators_equal_torch(inputs, estimator):
  logps, ref = torch.tensor(inputs["logps"]), torch.tensor(inputs["ref"])
  if estimator == "k3":  # TRL's per_token_kl
    expected = torch.exp(ref - logps) - (ref - logps) - 1
  else:
    expected = logps - ref
  ours = np.asarray(losses.kl_per_token(inputs["logps"], inputs["ref"], estimator))
  np.testing.assert_allclose(ours, expected.numpy(), atol=1e-6)


def test_k3_is_nonnegative_and_k1_k3_agree_on_average_for_samples():
  """Both estimate KL(p || q) from samples of p: their means near the exact value."""
  rng = np.random.default_rng(1)
  p, q = np.array([0.5, 0.3, 0.2]), np.array([0.3, 0.3, 0.4])
  x = rng.choice(3, size=200_000, p=p)
  exact = float(np.sum(p * np.log(p / q)))
  k1 = np.asarray(losses.kl_per_token(np.log(p[x]), np.log(q[x]), "k1"))
  k3 = np.asarray(losses.kl_per_token(np.log(p[x]), np.log(q[x]), "k3"))
  assert k3.min() >= 0
  assert abs(k1.mean() - exact) < 0.01 and abs(k3.mean() - exact) < 0.01


def torch_grpo_loss(x, advantages, loss_type, eps_low, eps_high, beta):
  logps, old = torch.tensor(x["logps"]), torch.tensor(x["old"])
  ref, mask = torch.tensor(x["ref"]), torch.tensor(x["mask"])
  adv = torch.tensor(advantages)
  coef_1 = torch.exp(logps - old)
  coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
  per_token_loss = -torch.min(coef_1 * adv.unsqueeze(1), coef_2 * adv.unsqueeze(1))
  if beta:
    per_token_loss = per_token_loss + beta * (torch.exp(ref - logps) - (ref - logps) - 1)
  if loss_type == "sequence":  # TRL "grpo"
    loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
  elif loss_type == "token":   # TRL "dapo" / "bnpo" on one process
    loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
  else:                        # TRL "dr_grpo"
    loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * N)
  low = (coef_1 < 1 - eps_low) & (adv.unsqueeze(1) < 0)
  high = (coef_1 > 1 + eps_high) & (adv.unsqueeze(1) > 0)
  clip_ratio = ((low | high).float() * mask).sum() / mask.sum()
  return float(loss), float(clip_ratio)


@pytest.mark.parametrize("loss_type,eps_high,beta", [("sequence", 0.2, 0.04),
                                                     ("token", 0.28, 0.0),
                                                     ("dr_grpo", 0.2, 0.1)])
def test_grpo_loss_and_clip_fraction_equal_trl(inputs, loss_type, eps_high, beta):
  advantages = torch_advantages(inputs["rewards"], "group")
  expected, expected_clip = torch_grpo_loss(inputs, advantages, loss_type, 0.2, eps_high, beta)
  pieces = losses.grpo_per_token(inputs["logps"], inputs["old"], inputs["ref"], advantages,
                                 0.2, eps_high, beta, "k3")
  total, weight = losses.aggregate(pieces["loss"], inputs["mask"], loss_type, N)
  assert abs(float(total / weight) - expected) < 1e-6
  clip = float((pieces["clipped"] * inputs["mask"]).sum() / inputs["mask"].sum())
  assert clip == pytest.approx(expected_clip, abs=1e-6) and 0 < clip < 1
