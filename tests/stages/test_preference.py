"""The preference stages: DPO's and the Bradley-Terry losses against PyTorch written here, the
summed reply log-probs of an imported Llama against transformers', and a reward model that
starts from a workdir's decoder with a fresh head and scores replies (lm/stages/dpo.py,
lm/stages/reward.py, lm/infer/reward.py)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import config as config_lib
from lm import stages
from lm.stages import dpo, pairs, reward

RNG = np.random.default_rng(0)
B = 16
POLICY_C, POLICY_R, REF_C, REF_R = (RNG.normal(-20, 5, B) for _ in range(4))


def torch_dpo(loss_type, beta, smoothing):
  """DPO, IPO and hinge as TRL's DPOTrainer.dpo_loss writes them, in float64 PyTorch."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  pc, pr, rc, rr = (torch.tensor(x, dtype=torch.float64) for x in (POLICY_C, POLICY_R, REF_C, REF_R))
  logits = (pc - pr) - (rc - rr)
  if loss_type == "sigmoid":
    losses = -F.logsigmoid(beta * logits) * (1 - smoothing) - F.logsigmoid(-beta * logits) * smoothing
  elif loss_type == "hinge":
    losses = torch.relu(1 - beta * logits)
  else:
    losses = (logits - 1 / (2 * beta)) ** 2
  return losses.numpy(), (beta * (pc - rc)).numpy(), (beta * (pr - rr)).numpy()


@pytest.mark.parametrize("loss_type, beta, smoothing", [
    ("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2), ("ipo", 0.1, 0.0), ("ipo", 0.7, 0.0),
    ("hinge", 0.1, 0.0), ("hinge", 0.05, 0.0)])
def test_dpo_losses_match_pytorch(loss_type, beta, smoothing):
  with jax.enable_x64(True):
    got = dpo.dpo_loss(*(jnp.asarray(x) for x in (POLICY_C, POLICY_R, REF_C, REF_R)),
                       beta=beta, loss_type=loss_type, label_smoothing=smoothing)
    got = [np.asarray(x) for x in got]
  expected = torch_dpo(loss_type, beta, smoothing)
  assert 0 < np.mean(got[0]) and np.std(got[0]) > 0  # the hinge is not flat on these numbers
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g, e, rtol=0, atol=1e-6)


def test_bradley_terry_loss_matches_pytorch_soft_label_cross_entropy():
  import torch  # pylint: disable=import-outside-toplevel
  chosen, rejected, margin = RNG.normal(0, 2, B), RNG.normal(0, 2, B), RNG.uniform(0, 1, B)
  p = np.where(RNG.random(B) < 0.5, 1.0, RNG.uniform(0, 1, B))
  with jax.enable_x64(True):
    got = np.asarray(reward.bradley_terry_loss(*(jnp.asarray(x) for x in
                                                  (chosen, rejected, margin, p))))
  expected = torch.nn.functional.binary_cross_entropy_with_logits(
      torch.tensor(chosen - rejected - margin), torch.tensor(p), reduction="none").numpy()
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
  hard = p == 1.0  # the hard-label case is -log sigmoid(r_c - r_r - margin)
  np.testing.assert_allclose(got[hard], np.log1p(np.exp(-(chosen - rejected - margin)[hard])),
                             atol=1e-6)


def pair_config(data_cache, stage: str, **overrides):
  config = config_lib.base_config()
  config.stage = stage
  config.model.preset = "tiny"
  config.data.cache_dir = data_cache
  config.data.source = "builtin:preferences"
  t = config.train
  t.steps, t.batch_size, t.seq_len, t.lr, t.warmup_steps = 1, 4, 64, 1e-3, 1
  t.log_every, t.eval_every, t.checkpoint_every = 1, 1000, 1000
  config.data.eval_documents = 8
  for key, value in overrides.items():
    section, field = key.split("__") if "__" in key else (None, key)
    if section:
      config[section][field] = value
    else:
      config[field] = value
  return config_lib.lock(config)


def first_metrics(workdir) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return next(json.loads(line) for line in f if '"loss"' in line)


def test_reply_logps_of_an_imported_llama_match_transformers(data_cache, tmp_path):
  """DPO from a random tiny HF Llama: the first step's logps/chosen and logps/rejected (the
  policy's summed reply log-probs, averaged over the batch) are transformers' on the same
  rows, and at the start the policy is its reference: rewards 0, loss log 2."""
  import torch  # pylint: disable=import-outside-toplevel
  from lm.data import sources, tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from tests.interop import hf_models  # pylint: disable=import-outside-toplevel
  model = hf_models.make_model("llama")
  hf_config = model.config
  hf_config.vocab_size = 512
  torch.manual_seed(0)
  import transformers  # pylint: disable=import-outside-toplevel
  model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.1)
  model.eval().save_pretrained(str(tmp_path / "llama"))
  config = pair_config(data_cache, "dpo", init_from=f"hf:{tmp_path / 'llama'}")
  workdir = str(tmp_path / "run")
  stages.train_and_evaluate(config, workdir)
  metrics = first_metrics(workdir)

  from lm.interop import convert  # pylint: disable=import-outside-toplevel
  resolved = convert.resolve(config)
  stage = dpo.Stage(resolved, tokenizer_lib.get(resolved.data.tokenizer))
  source = sources.open_source(resolved.data, stage.fields)
  batches = stage.train_batches(source.train, resolved, slice(0, 4), resolved.seed)
  batch = next(batches)
  batches.close()
  for side in pairs.SIDES:
    with torch.no_grad():
      logits = model(torch.tensor(batch[f"{side}_inputs"], dtype=torch.long)).logits.double()
    logps = torch.log_softmax(logits, -1).gather(
        -1, torch.tensor(batch[f"{side}_targets"], dtype=torch.long)[..., None])[..., 0]
    mask = torch.tensor(batch[f"{side}_loss_mask"], dtype=torch.float64)
    expected = float((logps * mask).sum(-1).mean())
    assert 0 < mask.sum() < mask.numel() / 2  # the prompt and the padding are not summed
    assert abs(metrics[f"logps/{side}"] - expected) <= 1e-4, (side, metrics, expected)
  assert metrics["rewards/chosen"] == 0 and metrics["rewards/margins"] == 0
  assert metrics["loss"] == pytest.approx(np.log(2), abs=1e-6)


def test_reward_model_starts_from_a_workdir_with_a_fresh_head_and_scores_replies(
    data_cache, tmp_path):
  """init_from fills the decoder (the first update has learning rate 0, so the checkpoint
  holds the start); lm.RewardModel scores a reply as the unpadded model does at its last
  token, alone and in a batch."""
  import lm  # pylint: disable=import-outside-toplevel
  from lm.data import formats, tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from lm.train import checkpoint  # pylint: disable=import-outside-toplevel
  base = str(tmp_path / "base")
  base_config = pair_config(data_cache, "pretrain", data__source="synthetic:markov",
                            train__steps=2, train__seq_len=32)
  stages.train_and_evaluate(base_config, base)
  workdir = str(tmp_path / "reward")
  stages.train_and_evaluate(pair_config(data_cache, "reward", init_from=base), workdir)
  assert first_metrics(workdir)["lr"] == 0.0

  rm = lm.RewardModel(workdir)
  _, _, base_params = checkpoint.load_for_inference(base)
  for a, b in zip(jax.tree.leaves(rm.params["decoder"]), jax.tree.leaves(base_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(jnp.abs(rm.params["reward_head"]).sum()) > 0

  tokenizer = tokenizer_lib.get("byte")
  prompts = ["Add: 2+2", [{"role": "user", "content": "Sort: c a b"}], "Add: 2+2", "Add: 1+1"]
  replies = ["4", "a b c, I hope that helps.", "5 honestly", ""]   # "": an RL completion
  batch = rm.score_batch(prompts, replies)                           # that ended at once
  for i, (prompt, reply) in enumerate(zip(prompts, replies)):
    messages = formats.preference_of({"prompt": prompt, "chosen": "-", "rejected": "-"})[0]
    ids = tokenizer.render_chat(messages + [{"role": "assistant", "content": reply}])
    scores = rm.model.apply({"params": rm.params}, jnp.asarray([ids]))  # [1, T]
    assert batch[i] == pytest.approx(float(scores[0, -1]), abs=1e-5)
    assert rm.score(prompt, reply) == pytest.approx(batch[i], abs=1e-5)
  assert len(set(np.round(batch, 6))) == 4


def test_padding_rows_of_the_held_out_set_weigh_nothing(data_cache):
  """5 held-out pairs in batches of 4: the last batch has 3 empty rows, and the metrics are
  the means over the 5 pairs, each scored alone."""
  from lm.data import preferences, tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from lm.train import state as state_lib  # pylint: disable=import-outside-toplevel
  config = pair_config(data_cache, "reward", data__eval_documents=5)
  stage = reward.Stage(config, tokenizer_lib.get("byte"))
  model = stage.make_model(config_lib.model_config(config))
  params = jax.tree.map(lambda x: x.value, state_lib.init_params(model, jax.random.key(1)),
                        is_leaf=lambda x: hasattr(x, "value"))
  apply = lambda p, tokens, **kw: model.apply({"params": p}, tokens, **kw)
  records = preferences.records("eval")[:7]
  eval_set = stage.eval_set(records, config, slice(0, 4))
  assert len(eval_set.batches) == 2 and eval_set.batches[1]["weight"].tolist() == [1, 0, 0, 0]
  totals = {}
  for batch in eval_set.batches:
    for name, value in stage.eval_sums(apply, params, None, batch).items():
      totals[name] = totals.get(name, 0.0) + float(value)
  metrics = stage.eval_metrics(totals, eval_set)
  alone = [reward.rewards(apply, params, {k: v[None] for k, v in stage.row(r).items()})
           for r in records[:5]]
  losses = [float(reward.bradley_terry_loss(c, r, 0.0, 1.0)[0]) for c, r in alone]
  assert metrics["eval_loss"] == pytest.approx(np.mean(losses), abs=1e-5)
  assert metrics["eval_margin"] == pytest.approx(np.mean([float((c - r)[0]) for c, r in alone]),
                                                 abs=1e-5)
