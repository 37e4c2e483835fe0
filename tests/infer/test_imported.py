"""The engine and chat on imported Hugging Face models: greedy decoding equals
`transformers`' own `generate`, and chat renders the imported chat template.

Tiny random models from tests/interop/hf_models.py (no downloads), imported as
`lm convert --from_hf` does: Mistral, with a sliding window of 8, shorter than the
sequences, so the cache is a ring. (tests/model/test_kv_cache.py covers the other
architecture switches against the full forward pass.)
"""

import numpy as np
import pytest
import torch

from lm.infer import chat as chat_lib
from lm.infer.engine import Engine
from lm.infer.sampling import GREEDY
from lm.interop import convert
from tests.interop import hf_models

NEW_TOKENS = 20


@pytest.fixture(scope="module")
def import_family(tmp_path_factory):
  """import_family(name) -> (HF model, HF tokenizer, Engine on the imported workdir), built
  once per family."""
  loaded = {}

  def load(family: str):
    if family not in loaded:
      model = hf_models.make_model(family)
      tokenizer = hf_models.make_tokenizer("metaspace")
      hf_dir = hf_models.save(model, str(tmp_path_factory.mktemp(f"{family}_hf")), tokenizer)
      workdir = str(tmp_path_factory.mktemp(f"{family}_lm"))
      convert.import_hf(hf_dir, workdir)
      loaded[family] = model, tokenizer, Engine.from_workdir(workdir)
    return loaded[family]

  return load


@pytest.fixture(scope="module", params=["mistral"])
def imported(request, import_family):
  return (request.param, *import_family(request.param))


def test_greedy_decoding_equals_transformers_generate(imported):
  family, model, _, engine = imported
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, hf_models.VOCAB, n).tolist() for n in (5, 11)]
  completions = engine.generate(prompts, max_new_tokens=NEW_TOKENS, sampling=GREEDY,
                                stop_token_ids=[])
  for prompt, completion in zip(prompts, completions):
    ids = torch.tensor([prompt])
    with torch.inference_mode():
      out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                           max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                           pad_token_id=0)
    assert completion.tokens == out[0, len(prompt):].tolist(), family


def test_chat_renders_the_imported_template(import_family):
  _, tokenizer, engine = import_family("mistral")
  messages = [{"role": "user", "content": "hello world"}]
  reply = chat_lib.Client(engine=engine).messages.create(max_tokens=8, messages=messages,
                                                         system="be brief", temperature=0)
  expected = tokenizer.apply_chat_template([{"role": "system", "content": "be brief"}] + messages,
                                           add_generation_prompt=True, tokenize=True)
  if not isinstance(expected, list):  # transformers 5 returns a BatchEncoding
    expected = expected["input_ids"]
  assert chat_lib.render(engine.tokenizer, messages, "be brief") == list(expected)
  assert reply.usage.input_tokens == len(expected)
  assert chat_lib.stop_token_ids(engine.tokenizer) == [tokenizer.eos_token_id]
