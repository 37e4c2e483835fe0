"""PPO's arithmetic (lm/rl/ppo_math.py) against PyTorch written here as TRL's PPOTrainer writes
it (a Python loop over reversed columns for GAE, masked_whiten, torch.clamp), in float64 on
fixed inputs with ragged response lengths (one of a single token, one filling every column)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lm.rl import ppo_math

RNG = np.random.default_rng(0)
B, T, V = 6, 9, 11
LENGTHS = np.array([1, 9, 4, 6, 2, 7])
MASK = (np.arange(T)[None, :] < LENGTHS[:, None]).astype(np.float64)          # [B, T]
PAD = MASK == 0
SCORES = RNG.normal(0, 2, B)
LOGPROBS, OLD, REF = (RNG.normal(-2, 0.4, (B, T)) for _ in range(3))
VALUES, OLD_VALUES = RNG.normal(0, 1, (B, T)), RNG.normal(0, 1, (B, T))
LOGITS = RNG.normal(0, 2, (B, T, V))


def t(x):
  return torch.tensor(x, dtype=torch.float64)


def torch_masked_mean(values, mask):
  return (values * mask).sum() / mask.sum()


def torch_masked_var(values, mask, unbiased=True):
  variance = torch_masked_mean((values - torch_masked_mean(values, mask)) ** 2, mask)
  if unbiased:
    variance = variance * mask.sum() / (mask.sum() - 1)
  return variance


def torch_masked_whiten(values, mask, shift_mean=True):
  mean, var = torch_masked_mean(values, mask), torch_masked_var(values, mask)
  whitened = (values - mean) * torch.rsqrt(var + 1e-8)
  return whitened if shift_mean else whitened + mean


def torch_ppo_batch(kl_coef, gamma, lam, whiten_rewards):
  """TRL PPOTrainer's rewards, advantages and returns of one batch of rollouts."""
  logprobs, ref, values = t(LOGPROBS), t(REF), t(VALUES)
  padding = torch.tensor(PAD)
  values = torch.masked_fill(values, padding, 0)
  kl = logprobs - ref                                             # k1
  rewards = -kl_coef * kl
  rewards = torch.masked_fill(rewards, padding, 0)
  rewards[[torch.arange(B), torch.tensor(LENGTHS - 1)]] += t(SCORES)
  if whiten_rewards:
    rewards = torch_masked_whiten(rewards, ~padding, shift_mean=False)
    rewards = torch.masked_fill(rewards, padding, 0)
  lastgaelam, reversed_advantages = 0, []
  for col in reversed(range(T)):
    nextvalues = values[:, col + 1] if col < T - 1 else 0.0
    delta = rewards[:, col] + gamma * nextvalues - values[:, col]
    lastgaelam = delta + gamma * lam * lastgaelam
    reversed_advantages.append(lastgaelam)
  advantages = torch.stack(reversed_advantages[::-1], axis=1)
  returns = advantages + values
  whitened = torch.masked_fill(torch_masked_whiten(advantages, ~padding), padding, 0)
  return (x.numpy() for x in (rewards, advantages, returns, whitened))


def jax_ppo_batch(kl_coef, gamma, lam, whiten_rewards):
  mask = jnp.asarray(MASK)
  kl = jnp.asarray(LOGPROBS) - jnp.asarray(REF)
  rewards = ppo_math.penalized_rewards(jnp.asarray(SCORES), kl, mask, kl_coef)
  if whiten_rewards:
    rewards = ppo_math.whiten(rewards, mask, shift_mean=False)
  advantages, returns = ppo_math.gae(rewards, jnp.asarray(VALUES), mask, gamma, lam)
  return (np.asarray(x) for x in (rewards, advantages, returns,
                                  ppo_math.whiten(advantages, mask)))


@pytest.mark.parametrize("kl_coef, gamma, lam, whiten_rewards", [
    (0.05, 1.0, 0.95, False), (0.2, 0.9, 0.8, True), (0.0, 0.99, 1.0, False)])
def test_rewards_gae_and_whitening_match_trl_in_pytorch(kl_coef, gamma, lam, whiten_rewards):
  with jax.enable_x64(True):
    got = list(jax_ppo_batch(kl_coef, gamma, lam, whiten_rewards))
  expected = list(torch_ppo_batch(kl_coef, gamma, lam, whiten_rewards))
  assert np.abs(expected[1]).max() > 0.5            # the advantages are not trivially small
  for name, g, e in zip(("rewards", "advantages", "returns", "whitened"), got, expected):
    np.testing.assert_allclose(g * MASK, e * MASK, rtol=0, atol=1e-6, err_msg=name)
    assert not np.any(g[PAD]), name                 # nothing leaks into the padding


@pytest.mark.parametrize("epsilon, value_clip", [(0.2, 0.2), (0.05, 0.5)])
def test_clipped_losses_match_trl_in_pytorch(epsilon, value_clip):
  advantages, returns = RNG.normal(0, 1, (B, T)), RNG.normal(0, 1, (B, T))
  with jax.enable_x64(True):
    pg, pg_clipped = ppo_math.clipped_policy_loss(jnp.asarray(LOGPROBS), jnp.asarray(OLD),
                                                  jnp.asarray(advantages), epsilon)
    vf, vf_clipped = ppo_math.clipped_value_loss(jnp.asarray(VALUES), jnp.asarray(OLD_VALUES),
                                                 jnp.asarray(returns), value_clip)
    policy_loss = float(ppo_math.masked_mean(pg, jnp.asarray(MASK)))
    value_loss = float(ppo_math.masked_mean(vf, jnp.asarray(MASK)))
    clipfracs = [float(ppo_math.masked_mean(c, jnp.asarray(MASK))) for c in (pg_clipped,
                                                                             vf_clipped)]
  mask = ~torch.tensor(PAD)
  ratio = torch.exp(t(LOGPROBS) - t(OLD))
  pg_losses = -t(advantages) * ratio
  pg_losses2 = -t(advantages) * torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon)
  vpred, mb_values, mb_return = t(VALUES), t(OLD_VALUES), t(returns)
  vpredclipped = torch.clamp(vpred, mb_values - value_clip, mb_values + value_clip)
  vf_losses1, vf_losses2 = (vpred - mb_return) ** 2, (vpredclipped - mb_return) ** 2
  expected_clipfracs = [float(torch_masked_mean((a > b).double(), mask))
                        for a, b in ((pg_losses2, pg_losses), (vf_losses2, vf_losses1))]
  assert 0 < min(expected_clipfracs) and max(expected_clipfracs) < 1  # both sides exercised
  np.testing.assert_allclose(policy_loss, float(torch_masked_mean(
      torch.max(pg_losses, pg_losses2), mask)), rtol=0, atol=1e-6)
  np.testing.assert_allclose(value_loss, float(0.5 * torch_masked_mean(
      torch.max(vf_losses1, vf_losses2), mask)), rtol=0, atol=1e-6)
  np.testing.assert_allclose(clipfracs, expected_clipfracs, rtol=0, atol=1e-6)


def test_entropy_and_explained_variance_match_pytorch():
  returns = VALUES + RNG.normal(0, 0.5, (B, T))
  with jax.enable_x64(True):
    got_entropy = np.asarray(ppo_math.entropy(jnp.asarray(LOGITS)))
    got_ev = float(ppo_math.explained_variance(jnp.asarray(VALUES), jnp.asarray(returns),
                                               jnp.asarray(MASK)))
  expected_entropy = torch.distributions.Categorical(logits=t(LOGITS)).entropy().numpy()
  np.testing.assert_allclose(got_entropy, expected_entropy, rtol=0, atol=1e-6)
  y_true, y_pred = returns[~PAD], VALUES[~PAD]                  # SB3's explained_variance
  expected_ev = 1 - np.var(y_true - y_pred) / np.var(y_true)
  assert 0.3 < expected_ev < 1
  np.testing.assert_allclose(got_ev, expected_ev, rtol=0, atol=1e-6)


class TrlAdaptiveKLController:
  """TRL's AdaptiveKLController (Ziegler et al. 2019), verbatim but for the class name."""

  def __init__(self, init_kl_coef, target, horizon):
    self.value, self.target, self.horizon = init_kl_coef, target, horizon

  def update(self, current, n_steps):
    proportional_error = np.clip(current / self.target - 1, -0.2, 0.2)
    self.value *= 1 + proportional_error * n_steps / self.horizon


def test_adaptive_kl_coefficient_matches_trl_controller():
  controller = TrlAdaptiveKLController(0.2, 6.0, 10000)
  kls = [0.5, 5.9, 6.1, 7.0, 30.0, 0.0, 6.0]
  with jax.enable_x64(True):
    coef = jnp.float64(0.2)
    for kl in kls:
      controller.update(kl, 256)
      coef = ppo_math.adaptive_kl_coef(coef, jnp.float64(kl), 6.0, 10000, 256)
      np.testing.assert_allclose(float(coef), controller.value, rtol=1e-12)
  assert controller.value != 0.2
