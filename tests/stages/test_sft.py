"""The SFT stage: packed rows keep each conversation's mask, truncation is counted, a
pre-training workdir and an imported Hugging Face model fine-tune, and the first loss on an
imported Llama equals PyTorch's masked loss on the same batch."""

import json
import os
import re

import numpy as np
import pytest

from lm import config as config_lib
from lm import stages
from lm.data import tokenizer as tokenizer_lib
from lm.stages import sft
from tests.data.test_formats import LLAMA3_TEMPLATE, hf_tokenizer, role_token_expectation


def conversation(i: int) -> dict:
  turns = [{"role": "system", "content": "Be brief."}] if i % 2 else []
  for turn in range(1 + i % 3):
    turns += [{"role": "user", "content": f"q{i}.{turn} " + "x" * (i % 5)},
              {"role": "assistant", "content": f"a{i}.{turn}" + "y" * (i % 4)}]
  return {"messages": turns}


def sft_config(data_cache, **overrides):
  config = config_lib.base_config()
  config.stage = "sft"
  config.model.preset = "tiny"
  config.data.cache_dir = data_cache
  t = config.train
  t.steps, t.batch_size, t.seq_len, t.lr, t.warmup_steps = 2, 4, 64, 1e-3, 1
  t.log_every, t.eval_every, t.checkpoint_every = 1, 1000, 1000
  for key, value in overrides.items():
    section, field = key.split("__")
    config[section][field] = value
  return config_lib.lock(config)


@pytest.mark.parametrize("pack", [True, False])
def test_rows_keep_every_conversations_mask(data_cache, pack):
  """Every segment of every row is one whole conversation, with the mask its rendering
  gives (every assistant turn, never the others), positions from 0; padding is masked."""
  config = sft_config(data_cache, data__pack=pack, data__shuffle_rows=0)
  tokenizer = tokenizer_lib.ByteTokenizer()
  stage = sft.Stage(config, tokenizer)
  records = [conversation(i) for i in range(40)]
  expected = {}
  for record in records:
    ids = tokenizer.render_chat(record["messages"])[:65]  # longer ones are cut to 64 + 1
    expected[tuple(ids[:-1])] = role_token_expectation(tokenizer, ids)[1:]
  batches = stage.train_batches(records, config, slice(0, 4), seed=0)
  segments = turns = 0
  for _ in range(3):
    batch = next(batches)
    for row in range(4):
      seg = batch["segment_ids"][row]
      assert (batch["loss_mask"][row][seg == 0] == 0).all()
      ids_in_row = [s for s in np.unique(seg) if s]
      assert len(ids_in_row) == 1 or pack
      for s in ids_in_row:
        where = seg == s
        inputs = tuple(batch["inputs"][row][where])
        np.testing.assert_array_equal(batch["loss_mask"][row][where], expected[inputs])
        np.testing.assert_array_equal(batch["positions"][row][where], np.arange(where.sum()))
        targets = batch["targets"][row][where]
        turns += int(np.sum(targets[batch["loss_mask"][row][where] > 0]
                            == tokenizer.special_ids["<end_of_turn>"]))
        segments += 1
  batches.close()
  assert segments >= 12 if not pack else segments > 12  # packing puts several in a row
  assert turns > segments  # multi-turn conversations: every assistant turn is trained


def test_truncation_is_explicit_and_counted(data_cache):
  tokenizer = tokenizer_lib.ByteTokenizer()
  long = {"messages": [{"role": "user", "content": "u" * 10},
                       {"role": "assistant", "content": "a" * 100}]}
  records = [conversation(0), long]
  cut = sft.Stage(sft_config(data_cache, data__truncate="cut"), tokenizer)
  counts = sft.count_truncation(cut.example, records)
  assert counts.too_long == 1 and counts.scanned == 2
  # 64 + 1 tokens kept: <bos> <user> 10 <end_of_turn> <assistant>, then 51 of the answer.
  assert counts.assistant_tokens_lost == 101 - 51
  example = cut.example(long)
  assert len(example["inputs"]) == 64 and example["loss_mask"].sum() == 51
  drop = sft.Stage(sft_config(data_cache, data__truncate="drop"), tokenizer)
  assert drop.example(long) is None
  assert sft.count_truncation(drop.example, records).assistant_tokens_lost == 101
  with pytest.raises(ValueError, match="data.truncate='middle'"):
    config_lib.validate(sft_config(data_cache, data__truncate="middle"),
                        config_lib.model_config(sft_config(data_cache)), 263,
                        {"data": 1, "fsdp": 1, "tensor": 1})


def test_a_record_without_the_field_names_file_line_and_field(data_cache, tmp_path):
  path = tmp_path / "chat.jsonl"
  lines = [json.dumps(conversation(i)) for i in range(3)] + [json.dumps({"text": "hi"})]
  path.write_text("\n".join(lines) + "\n")
  config = sft_config(data_cache, data__source=f"jsonl:{path}")
  with pytest.raises(ValueError, match=rf"{path}:4: no field 'messages'"):
    stages.train_and_evaluate(config, str(tmp_path / "run"))


def test_sft_from_a_pretraining_workdir_on_builtin_tasks(data_cache, tmp_path):
  """`--config.stage=sft --config.data.source=builtin:tasks --config.init_from=WORKDIR`:
  the model and tokenizer come from the workdir, and lm chat's engine loads the result."""
  pretrained = str(tmp_path / "pretrained")
  config = sft_config(data_cache)
  config.unlock()
  config.stage, config.data.source = "pretrain", "synthetic:markov"
  stages.train_and_evaluate(config_lib.lock(config), pretrained)
  config = sft_config(data_cache, data__source="builtin:tasks")
  config.unlock()
  config.init_from = pretrained
  result = stages.train_and_evaluate(config_lib.lock(config), str(tmp_path / "sft"))
  assert result["step"] == 2 and np.isfinite(result["eval_loss"])
  from lm.infer.chat import Client  # pylint: disable=import-outside-toplevel
  reply = Client(str(tmp_path / "sft")).messages.create(
      max_tokens=4, temperature=0.0, messages=[{"role": "user", "content": "Add: 1+2"}])
  assert reply.usage.output_tokens >= 1


def test_first_loss_of_an_imported_llama_matches_pytorch(data_cache, tmp_path):
  """SFT of a random tiny Llama with the Llama-3 chat template: the first logged loss is
  PyTorch's cross-entropy over the assistant tokens of the same batch."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from lm.data import sources  # pylint: disable=import-outside-toplevel
  from tests.interop import hf_models  # pylint: disable=import-outside-toplevel
  model_dir = tmp_path / "llama"
  specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
  hf_tok, _ = hf_tokenizer(model_dir, LLAMA3_TEMPLATE, specials, "<|begin_of_text|>",
                           "<|eot_id|>")
  hf_config = hf_models.CONFIGS["llama"]()
  hf_config.vocab_size = 512
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.1)
  model.eval().save_pretrained(str(model_dir))
  data = tmp_path / "chat.jsonl"
  data.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(30)))
  config = sft_config(data_cache, data__source=f"jsonl:{data}", data__pack=False,
                      train__steps=1, train__seq_len=128)  # every conversation fits
  config.unlock()
  config.init_from = f"hf:{model_dir}"
  config = config_lib.lock(config)
  workdir = str(tmp_path / "run")
  stages.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    first_loss = next(json.loads(line)["loss"] for line in f if '"loss"' in line)

  # The same first batch, from the same stage and seed.
  from lm.interop import convert  # pylint: disable=import-outside-toplevel
  resolved = convert.resolve(config)
  tokenizer = tokenizer_lib.get(resolved.data.tokenizer)
  stage = sft.Stage(resolved, tokenizer)
  source = sources.open_source(resolved.data, config_lib.data_fields(resolved, stage))
  batches = stage.train_batches(source.train, resolved, slice(0, 4), resolved.seed)
  batch = next(batches)
  batches.close()
  assert (batch["segment_ids"] <= 1).all()  # one conversation per row, padded at the end
  first = batch["inputs"][0][batch["segment_ids"][0] == 1]
  assert list(first[:2]) == [hf_tok.convert_tokens_to_ids("<|begin_of_text|>"),
                             hf_tok.convert_tokens_to_ids("<|start_header_id|>")]
  for row in range(4):  # the mask is the assistant turns of the row's conversation
    where = batch["segment_ids"][row] == 1
    i = int(re.search(r"q(\d+)\.0", hf_tok.decode(batch["inputs"][row][where])).group(1))
    masked = batch["targets"][row][where][batch["loss_mask"][row][where] > 0]
    assert hf_tok.decode(masked) == "".join(m["content"].strip() + "<|eot_id|>"
                                            for m in conversation(i)["messages"]
                                            if m["role"] == "assistant")
  with torch.no_grad():
    logits = model(torch.tensor(batch["inputs"], dtype=torch.long)).logits.double()
  nll = torch.nn.functional.cross_entropy(
      logits.reshape(-1, logits.shape[-1]),
      torch.tensor(batch["targets"].reshape(-1), dtype=torch.long), reduction="none")
  mask = torch.tensor(batch["loss_mask"].reshape(-1), dtype=torch.float64)
  expected = float((nll * mask).sum() / mask.sum())
  assert 0 < mask.sum() < mask.numel() / 2  # user and system tokens are context only
  assert abs(first_loss - expected) <= 1e-5, (first_loss, expected)

  # The template is saved with the run: chat renders with it even when the source changes.
  (model_dir / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
  from lm.infer.engine import Engine  # pylint: disable=import-outside-toplevel
  assert tokenizer_lib.get(resolved.data.tokenizer).chat_template != LLAMA3_TEMPLATE
  assert Engine.from_workdir(workdir).tokenizer.chat_template == LLAMA3_TEMPLATE
