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
  pc, pr, rc, rr = (torch.tensor(x, dtype=torch.float64)
                    for x in (POLICY_C, POLICY_R, REF_C, REF_R))
  logits = (pc - pr) - (rc - rr)
  if loss_type == "sigmoid":
    losses = (-F.logsigmoid(beta * logits) * (1 - smoothing)
              - F.logsigmoid(-beta * logits) * smoothing)
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
    # reward.read_at="reply_end": the reply's last token, before its end of turn (none in an
    # empty reply: the end of turn)
    rm.read_at = "reply_end"
    assert rm.score(prompt, reply) == pytest.approx(float(scores[0, -2 if reply else -1]),
                                                    abs=1e-5)
    rm.read_at = "end_of_turn"
  assert len(set(np.round(batch, 6))) == 4
  tokenizer = tokenizer_lib.get("byte")
  assert reward.Stage(pair_config(data_cache, "reward", reward__read_at="reply_end"),
                      tokenizer).row.read_at == "reply_end"
  with pytest.raises(ValueError, match="reward.read_at='eot'"):
    reward.Stage(pair_config(data_cache, "reward", reward__read_at="eot"), tokenizer)


def test_padding_rows_of_the_held_out_set_weigh_nothing(data_cache):
  """5 held-out pairs in batches of 4: the last batch has 3 empty rows, and the metrics are
  the means over the 5 pairs, each scored alone."""
  # pylint: disable-next=import-outside-toplevel
  from lm.data import preferences, tokenizer as tokenizer_lib
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


def _logps_numpy(logits, batch, side):
  """Summed reply log-probs [B] from logits [B, T, V], in float64 numpy."""
  logits = np.asarray(logits, np.float64)
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  picked = np.take_along_axis(logits, np.asarray(batch[f"{side}_targets"])[..., None], -1)[..., 0]
  return ((picked - logz) * np.asarray(batch[f"{side}_loss_mask"])).sum(-1)


def test_lora_dpo_reference_is_the_base_with_the_adapters_off(data_cache):
  """With LoRA the frozen tree holds the base alone (no second copy), and the reference
  log-probs DPO reads are the plain Decoder's on that base, while the policy's (trained,
  non-zero adapters) differ."""
  # pylint: disable-next=import-outside-toplevel
  from lm.data import preferences, tokenizer as tokenizer_lib
  from lm.model import Decoder, lora  # pylint: disable=import-outside-toplevel
  from lm.train import state as state_lib  # pylint: disable=import-outside-toplevel
  config = pair_config(data_cache, "dpo", lora__rank=4, dpo__beta=0.5)
  stage = stages.for_config(config)(config, tokenizer_lib.get("byte"))
  model_config = config_lib.model_config(config)
  model = stage.make_model(model_config)
  params = jax.tree.map(lambda x: x.value, state_lib.init_params(model, jax.random.key(1)),
                        is_leaf=lambda x: hasattr(x, "value"))
  trainable, frozen = stage.partition(params)
  assert set(frozen) == {"base"}
  keys = iter(jax.random.split(jax.random.key(2), 100))
  trainable = jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape), trainable)
  batch = stage.eval_set(preferences.records("eval")[:4], config, slice(0, 4)).batches[0]
  apply = lambda p, tokens, **kw: model.apply({"params": p}, tokens, **kw)
  sums = jax.jit(lambda t, f, b: stage.loss(apply, t, f, b)[1])(trainable, frozen, batch)
  base = jax.jit(Decoder(model_config).apply)
  adapted = jax.jit(model.apply)
  for side in pairs.SIDES:
    reference = _logps_numpy(base({"params": frozen["base"]}, batch[f"{side}_inputs"]),
                             batch, side)
    policy = _logps_numpy(adapted({"params": lora.join(trainable, frozen["base"])},
                                  batch[f"{side}_inputs"]), batch, side)
    assert np.abs(policy - reference).min() > 0.1   # the adapters change the policy
    assert float(sums[f"logps/{side}"]) == pytest.approx(policy.sum(), abs=1e-3)
    got_reference = float(sums[f"logps/{side}"] - sums[f"rewards/{side}"] / 0.5)
    assert got_reference == pytest.approx(reference.sum(), abs=1e-3)


def test_lora_dpo_trains_the_adapters(data_cache, tmp_path):
  """Two LoRA DPO steps (the first at learning rate 0): the first starts at log 2 (the
  policy is its reference), the adapters move and the held-out loss falls, and frozen/ holds
  the base alone."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from lm.train import checkpoint  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path)
  metrics = stages.train_and_evaluate(
      pair_config(data_cache, "dpo", lora__rank=4, train__steps=2, train__lr=1e-2), workdir)
  assert first_metrics(workdir)["loss"] == pytest.approx(np.log(2), abs=1e-6)
  assert metrics["eval_loss"] < np.log(2) - 0.01 and metrics["eval_rewards/margins"] > 0
  with ocp.StandardCheckpointer() as checkpointer:
    frozen = checkpointer.restore(os.path.join(workdir, checkpoint.FROZEN_DIR))
    state = checkpointer.restore(os.path.join(workdir, "checkpoints", "2", "state"))
  assert set(frozen) == {"base"}
  adapters = jax.tree_util.tree_leaves_with_path(state["params"])
  assert adapters and all("_lora_" in jax.tree_util.keystr(p) for p, _ in adapters)
  assert all(np.abs(v).sum() > 0 for p, v in adapters if "_lora_b" in jax.tree_util.keystr(p))


def test_precomputed_reference_gives_the_live_reference_losses(data_cache, tmp_path):
  """dpo.precompute_reference: the same losses and metrics as the frozen copy, step by step
  and held out; no frozen tree (in the state, on disk, in `lm plan`); a resumed run reads
  the saved log-probs instead of computing them; tokens/s counts both replies."""
  from lm import plan as plan_lib  # pylint: disable=import-outside-toplevel
  from lm.data import preferences  # pylint: disable=import-outside-toplevel
  from lm.stages import reference  # pylint: disable=import-outside-toplevel
  from lm.train import checkpoint  # pylint: disable=import-outside-toplevel
  path = tmp_path / "pairs.jsonl"
  path.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n"
                          for r in preferences.records("eval")[:40]))
  runs = {}
  for precompute in (False, True):
    config = pair_config(data_cache, "dpo", data__source=f"jsonl:{path}", train__steps=3,
                         train__lr=1e-2, train__eval_every=3, dpo__precompute_reference=precompute)
    workdir = str(tmp_path / str(precompute))
    stages.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      runs[precompute] = [json.loads(line) for line in f]
    assert os.path.exists(os.path.join(workdir, checkpoint.FROZEN_DIR)) != precompute
    assert os.path.exists(os.path.join(workdir, reference.FILE)) == precompute
  for live, pre in zip(runs[False], runs[True]):
    for name in ("loss", "rewards/margins", "rewards/chosen", "eval_loss",
                 "eval_rewards/accuracies", "eval_rewards/margins"):
      if name in live:
        assert pre[name] == pytest.approx(live[name], abs=1e-5), name
  assert any("eval_loss" in m for m in runs[True])
  from lm.train import loop  # pylint: disable=import-outside-toplevel
  assert loop.tokens_per_step(stages.get("dpo"), config.train) == 4 * 2 * 64  # both replies

  workdir = str(tmp_path / "True")
  saved = os.path.getmtime(os.path.join(workdir, reference.FILE))
  resumed = stages.train_and_evaluate(pair_config(
      data_cache, "dpo", data__source=f"jsonl:{path}", train__steps=4, train__lr=1e-2,
      train__eval_every=3, dpo__precompute_reference=True), workdir)
  assert resumed["step"] == 4
  assert os.path.getmtime(os.path.join(workdir, reference.FILE)) == saved

  live_plan = plan_lib.plan(pair_config(data_cache, "dpo"), compile_step=False)
  pre_plan = plan_lib.plan(pair_config(data_cache, "dpo", dpo__precompute_reference=True),
                           compile_step=False)
  assert live_plan.frozen == live_plan.params > 0 and pre_plan.frozen == 0


def test_rpo_adds_alpha_times_the_chosen_nll_per_token(data_cache):
  """dpo.rpo_alpha: the summed loss grows by alpha x each chosen reply's negative
  log-likelihood per token (from the Decoder's logits, in numpy), and nothing else moves."""
  # pylint: disable-next=import-outside-toplevel
  from lm.data import preferences, tokenizer as tokenizer_lib
  from lm.model import Decoder  # pylint: disable=import-outside-toplevel
  from lm.train import state as state_lib  # pylint: disable=import-outside-toplevel
  sums = {}
  for alpha in (0.0, 0.7):
    config = pair_config(data_cache, "dpo", dpo__rpo_alpha=alpha)
    stage = dpo.Stage(config, tokenizer_lib.get("byte"))
    model = Decoder(config_lib.model_config(config))
    params = jax.tree.map(lambda x: x.value, state_lib.init_params(model, jax.random.key(1)),
                          is_leaf=lambda x: hasattr(x, "value"))
    trainable, frozen = stage.partition(params)
    batch = stage.eval_set(preferences.records("eval")[:4], config, slice(0, 4)).batches[0]
    apply = lambda p, tokens, **kw: model.apply({"params": p}, tokens, **kw)
    sums[alpha] = jax.jit(lambda t, f, b: stage.loss(apply, t, f, b)[1])(trainable, frozen, batch)
  chosen = _logps_numpy(jax.jit(model.apply)({"params": params}, batch["chosen_inputs"]), batch,
                        "chosen")
  nll = -chosen / np.asarray(batch["chosen_loss_mask"]).sum(-1)
  assert float(sums[0.7]["loss"] - sums[0.0]["loss"]) == pytest.approx(0.7 * nll.sum(), rel=1e-4)
  assert float(sums[0.0]["nll_loss"]) == pytest.approx(nll.sum(), rel=1e-4)
  assert float(sums[0.7]["rewards/margins"]) == float(sums[0.0]["rewards/margins"])


def test_plan_counts_both_rows_of_a_pair_as_xla_and_the_loop_do(data_cache):
  """`lm plan`'s FLOPs for a pair stage are those of 2 x batch_size rows, as XLA counts the
  reward stage's real gradient (the tiny model has no output layer there: ~0.8 of the plan's,
  which includes one) and as the loop's tokens/s and MFU count them."""
  from lm import plan as plan_lib  # pylint: disable=import-outside-toplevel
  from lm.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from lm.train import loop, state as state_lib  # pylint: disable=import-outside-toplevel
  config = pair_config(data_cache, "reward", model__scan_layers=False, model__remat="none",
                       model__num_layers=2, train__batch_size=8)
  plan = plan_lib.plan(config, compile_step=False)
  stage = stages.for_config(config)(config, tokenizer_lib.get("byte"))
  model = stage.make_model(config_lib.model_config(config))
  params = jax.eval_shape(lambda: jax.tree.map(
      lambda x: x.value, state_lib.init_params(model, jax.random.key(0)),
      is_leaf=lambda x: hasattr(x, "value")))
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in stage.example_batch(8, 64).items()}
  apply = lambda p, tokens, **kw: model.apply({"params": p}, tokens, **kw)
  grad = jax.jit(jax.grad(lambda p, b: stage.loss(apply, p, None, b)[0])).lower(params, batch)
  cost = grad.compile().cost_analysis()
  xla_flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
  assert 0.7 < xla_flops / plan.flops_per_step < 1.0
  assert plan.batch_size == 16 and plan.micro_batch == 16   # 8 pairs: 16 rows on one device
  flops_per_token = plan.flops_per_step / (plan.batch_size * plan.seq_len)
  assert plan.flops_per_step == flops_per_token * loop.tokens_per_step(stage, config.train)
  assert "8 pairs = 16 rows" in plan_lib.format_plan(plan)
