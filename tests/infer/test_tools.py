"""Tool use and count_tokens (lm/infer/tools.py, constrain.py, chat.py, server.py), driven by
the official `anthropic` SDK against `lm serve`'s server on loopback.

The sampled calls come from the tiny noise model (tests/infer/models.py), which knows
nothing of JSON: every call it makes parses and validates only because of the grammar.
SDK 2.14 has no `temperature` argument: it goes in `extra_body` (the server defaults to 1).
The round trip (tool_use -> tool_result -> answer) runs on the noise model always, and on
SmolLM2-135M-Instruct (where the answer must use the result) when `lm
fetch` has it cached or can download it (as tests/interop/test_gguf.py), else is skipped;
it costs about a minute here (load and compile), so it runs only with LM_TEST_SMOLLM2=1.
"""

import concurrent.futures
import json
import os
import threading
import time

import anthropic
import jax
import jax.numpy as jnp
import jsonschema
import numpy as np
import pytest

from lm.data import tokenizer as tokenizer_lib
from lm.infer import chat as chat_lib
from lm.infer import constrain
from lm.infer import server as server_lib
from lm.infer import tools as tools_lib
from lm.infer.engine import Engine
from lm.infer.sampling import GREEDY
from lm.interop import fetch as fetch_lib
from tests.infer import models

# Short names keep the byte-level prompt (tools described in it) under 512 tokens.
WEATHER = {"name": "weather", "description": "",
           "input_schema": {
               "type": "object",
               "properties": {
                   "c": {"type": "string", "maxLength": 4},
                   "u": {"enum": ["C", "F"]},
                   "d": {"type": "integer", "minimum": 1, "maximum": 7},
                   "t": {"type": "array", "maxItems": 2,
                         "items": {"type": "string", "pattern": "^[a-z]{1,3}$"}}},
               "required": ["c", "u", "d"], "additionalProperties": False}}
ADD = {"name": "add", "description": "a+b",
       "input_schema": {"type": "object",
                        "properties": {"a": {"type": "integer", "minimum": -9, "maximum": 9},
                                       "b": {"type": "integer", "minimum": -9, "maximum": 9}},
                        "required": ["a", "b"], "additionalProperties": False}}
PING = {"name": "ping", "input_schema": {"type": "object", "properties": {},
                                        "additionalProperties": False}}
SCHEMAS = {t["name"]: t["input_schema"] for t in (WEATHER, ADD, PING)}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
# One shape for the single requests (batch 1, prompt bucket 512, 256 new-token columns,
# greedy), so that they share compiled programs.
ONE = dict(model="lm", max_tokens=256, messages=ASK)


@pytest.fixture(scope="module")
def engine():
  """The tiny noise model with a context long enough for the tools' description."""
  config = models.TINY.replace(max_seq_len=2048)
  return Engine(config, jax.tree.map(jnp.asarray, models.noise_params()),
                tokenizer_lib.ByteTokenizer())


@pytest.fixture(scope="module")
def server(engine):
  server = server_lib.Server(engine, "127.0.0.1", 0, limits=server_lib.Limits(
      max_tokens=256, max_batch=128, max_queue=128))
  threading.Thread(target=server.serve_forever, daemon=True).start()
  yield server
  server.shutdown()
  server.server_close()


@pytest.fixture(scope="module")
def sdk(server):
  return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)


def test_constrained_greedy_takes_the_best_allowed_token(engine):
  """Greedy decoding under a grammar picks, at each step, the argmax of the model's own
  logits over the tokens the grammar allows (computed here from the full forward pass)."""
  vocab = constrain.vocabulary(engine.tokenizer, [262])
  constraint = constrain.Constraint(constrain.lark('start: /[0-9]{3}-[a-c]{2}/\n'), vocab)
  prompt = [int(t) for t in engine.tokenizer.encode("Number: " * 40)]  # bucket 512, as ONE
  [completion] = engine.generate([prompt], max_new_tokens=256, sampling=GREEDY,
                                 stop_token_ids=[262], constraints=[constraint])
  assert completion.stop_reason == "end_turn"
  text = engine.tokenizer.decode(completion.tokens)
  assert len(text) == 6 and text[:3].isdigit() and text[3] == "-" and set(text[4:]) <= set("abc")
  ids = jnp.asarray([prompt + completion.tokens])
  logits = np.asarray(engine.model.apply({"params": engine.params}, ids))[0]
  for j, token in enumerate(completion.tokens):
    allowed = [ord(c) for c in "0123456789"] if j < 3 else [ord("-")] if j == 3 else (
        [ord(c) for c in "abc"] if j < 6 else [262])
    row = logits[len(prompt) - 1 + j]
    assert token == allowed[int(np.argmax(row[allowed]))], j


def test_100_sampled_calls_parse_and_validate(sdk, server):
  """Temperature 1, tool_choice any: every reply is one tool_use block with an input valid
  under the schema (the noise model alone writes no JSON at all). The requests are held
  until all have queued, so that they decode as one batch."""
  def call(_):
    return sdk.messages.create(**ONE, extra_body={"temperature": 1.0}, tools=[WEATHER],
                               tool_choice={"type": "any", "disable_parallel_tool_use": True})
  server.batcher.admit.clear()
  try:
    with concurrent.futures.ThreadPoolExecutor(100) as pool:
      futures = [pool.submit(call, i) for i in range(100)]
      deadline = time.monotonic() + 60
      while server.batcher.jobs.qsize() < 99:  # one held by the engine thread
        assert time.monotonic() < deadline, server.batcher.jobs.qsize()
        time.sleep(0.01)
      server.batcher.admit.set()
      replies = [f.result() for f in futures]
  finally:
    server.batcher.admit.set()
  assert server.batcher.history[-1].size == 100
  inputs = []
  for reply in replies:
    assert reply.stop_reason == "tool_use", reply
    [use] = reply.content
    assert use.type == "tool_use" and use.name == "weather" and use.id.startswith("toolu_")
    jsonschema.validate(use.input, WEATHER["input_schema"])
    inputs.append(json.dumps(use.input, sort_keys=True))
  assert len(set(inputs)) > 90  # sampled, not one fixed reply


def test_tool_choice_tool_and_none(sdk, server):
  reply = sdk.messages.create(**ONE, extra_body={"temperature": 0}, tools=[PING, ADD],
                              tool_choice={"type": "tool", "name": "add",
                                           "disable_parallel_tool_use": True})
  [use] = reply.content
  assert use.name == "add" and reply.stop_reason == "tool_use"
  jsonschema.validate(use.input, SCHEMAS["add"])
  # "none": the tools are still described, but the reply is free text (no grammar).
  request = chat_lib.parse_request({**ONE, "tools": [WEATHER], "tool_choice": {"type": "none"}})
  assert server.chat.constraint(request) is None
  assert '"name":"weather"' in server.chat.tokenizer.decode(server.chat.prompt(request))


def test_streamed_tool_use_equals_the_message(sdk):
  request = dict(**ONE, extra_body={"temperature": 0}, tools=[PING, ADD],
                 tool_choice={"type": "tool", "name": "add"})
  plain = sdk.messages.create(**request)
  with sdk.messages.stream(**request) as stream:
    final = stream.get_final_message()
  assert final.stop_reason == plain.stop_reason == "tool_use"
  assert [(b.name, b.input) for b in final.content] == [(b.name, b.input) for b in plain.content]
  assert set(final.content[0].input) == {"a", "b"}


def test_tool_input_streams_while_it_is_written(sdk, server):
  """A streamed tool_use block opens with its id, name and empty input, then its input comes
  in input_json_delta pieces, one per snapshot of chunk_tokens tokens (the byte tokenizer:
  at most that many characters each), which join to the input of the final message."""
  request = dict(**ONE, extra_body={"temperature": 0}, tools=[WEATHER],
                 tool_choice={"type": "tool", "name": "weather",
                              "disable_parallel_tool_use": True})
  with sdk.messages.stream(**request) as stream:
    events = list(stream)
    final = stream.get_final_message()
  kinds = [e.type for e in events if e.type != "input_json"]  # input_json: the SDK's own
  assert kinds[:2] == ["message_start", "content_block_start"]
  assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
  start = events[1].content_block
  assert (start.type, start.name, start.input) == ("tool_use", "weather", {})
  pieces = [e.delta.partial_json for e in events
            if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
  chunk = server.limits.chunk_tokens
  assert len(pieces) >= 2 and all(0 < len(p) <= chunk for p in pieces), pieces
  [use] = final.content
  assert final.stop_reason == "tool_use" and use.id == start.id
  assert use.input == json.loads("".join(pieces))
  jsonschema.validate(use.input, WEATHER["input_schema"])


def test_tool_round_trip_use_result_answer(sdk, server):
  """tool_use -> tool_result -> answer through the SDK, as a client writes it: the assistant's
  content goes back as the SDK returned it, the result in the next user turn; the model's next
  prompt holds the call and the result, and the answer is text (tool_choice none)."""
  request = dict(model="lm", max_tokens=256, tools=[ADD], extra_body={"temperature": 0})
  reply = sdk.messages.create(**request, messages=ASK, tool_choice={"type": "any"})
  [use] = reply.content
  assert reply.stop_reason == "tool_use" and use.name == "add"
  turns = ASK + [{"role": "assistant", "content": reply.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                               "content": "sum is 77"}]}]
  final = sdk.messages.create(**request, messages=turns, tool_choice={"type": "none"})
  assert final.stop_reason != "tool_use" and [b.type for b in final.content] == ["text"]
  body = {**request, "messages": [{**t, "content": [b.model_dump() for b in t["content"]]}
                                  if t["role"] == "assistant" else t for t in turns]}
  del body["extra_body"]
  prompt = server.chat.tokenizer.decode(server.chat.prompt(chat_lib.parse_request(body)))
  assert "<tool_result>sum is 77</tool_result>" in prompt
  assert json.dumps(use.input, separators=(",", ":")) in prompt
  assert final.usage.input_tokens == len(server.chat.prompt(chat_lib.parse_request(body)))


def history(use_id="toolu_1"):
  return ASK + [
      {"role": "assistant", "content": [
          {"type": "text", "text": "Ok."},
          {"type": "tool_use", "id": use_id, "name": "add", "input": {"a": 1, "b": 2}}]},
      {"role": "user", "content": [
          {"type": "tool_result", "tool_use_id": "toolu_1",
           "content": [{"type": "text", "text": "3"}]}]}]


def test_count_tokens_equals_the_prompt_tokens_of_create(sdk):
  for fields in (dict(messages=ASK, tools=[WEATHER]),
                 dict(messages=ASK, system="Be brief.", tools=[WEATHER]),
                 dict(messages=history(), tools=[ADD])):
    counted = sdk.messages.count_tokens(model="lm", **fields).input_tokens
    created = sdk.messages.create(**{**ONE, **fields}, extra_body={"temperature": 0},
                                  tool_choice={"type": "any"})
    assert counted == created.usage.input_tokens > 300  # the tools are in the prompt
  with pytest.raises(anthropic.BadRequestError, match="answers no tool_use"):
    sdk.messages.count_tokens(model="lm", messages=history(use_id="toolu_2"), tools=[ADD])


@pytest.mark.parametrize("fields,message", [
    (dict(tools=[{"name": "bad name", "input_schema": {"type": "object"}}]), "tools.0.name"),
    (dict(tools=[{"name": "f", "input_schema": {"type": "string"}}]), "input_schema"),
    (dict(tools=[WEATHER, WEATHER]), "defined twice"),
    (dict(tools=[WEATHER], tool_choice={"type": "tool", "name": "nope"}), "tool_choice.name"),
    (dict(tool_choice={"type": "any"}), "needs tools"),
    (dict(tools=[WEATHER], tool_choice={"type": "sometimes"}), "tool_choice"),
    (dict(messages=[{"role": "user", "content": [{"type": "tool_use", "id": "x", "name": "f",
                                                   "input": {}}]}]), "user blocks"),
])
def test_malformed_tool_requests_name_the_field(fields, message):
  body = {"max_tokens": 8, "messages": ASK, **fields}
  with pytest.raises(chat_lib.RequestError, match=message):
    chat_lib.parse_request(body)


@pytest.mark.skipif(not os.environ.get("LM_TEST_SMOLLM2"),
                    reason="about a minute on 2 CPU cores: set LM_TEST_SMOLLM2=1 to run it")
def test_smollm2_tool_round_trip():
  """tool_use -> tool_result -> final answer with the real instruct model, greedy: the call
  validates, and the answer uses the tool's result (18, which the question does not hold)."""
  try:
    workdir = fetch_lib.fetch("smollm2-135m-instruct")
  except RuntimeError as e:
    pytest.skip(f"SmolLM2 not available: {e}")
  server = server_lib.Server(Engine.from_workdir(workdir), "127.0.0.1", 0)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    client = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)
    tool = {"name": "get_weather", "description": "Current weather in a city.",
            "input_schema": {"type": "object",
                             "properties": {"city": {"type": "string", "maxLength": 40},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
                             "required": ["city", "unit"], "additionalProperties": False}}
    ask = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    request = dict(model="lm", max_tokens=64, tools=[tool], extra_body={"temperature": 0})
    reply = client.messages.create(**request, messages=ask, tool_choice={
        "type": "any", "disable_parallel_tool_use": True})
    assert reply.stop_reason == "tool_use"
    [use] = reply.content
    jsonschema.validate(use.input, tool["input_schema"])
    assert use.input["city"] == "Paris"
    turns = ask + [{"role": "assistant", "content": [use.model_dump()]},
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                 "content": "18 degrees celsius, sunny"}]}]
    final = client.messages.create(**request, messages=turns)
    assert final.stop_reason == "end_turn" and final.content[0].type == "text"
    assert "18" in final.content[0].text
    counted = client.messages.count_tokens(model="lm", messages=turns, tools=[tool])
    assert counted.input_tokens == final.usage.input_tokens
  finally:
    server.shutdown()
    server.server_close()


HERMES_TEMPLATE = (
    "{%- if tools %}<|system|>{% if messages[0].role == 'system' %}{{ messages[0].content }}"
    "{% endif %}\n# Tools\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}{% endif %}"
    "{%- for m in messages %}{% if m.role == 'system' and tools %}"
    "{% elif m.role == 'tool' %}<tool_response>{{ m.content }}</tool_response>\n"
    "{% else %}<|{{ m.role }}|>{{ m.content }}{% for c in m.tool_calls or [] %}<tool_call>\n"
    "{\"name\": \"{{ c.function.name }}\", \"arguments\": {{ c.function.arguments | tojson }}}"
    "\n</tool_call>{% endfor %}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_a_template_that_takes_tools_renders_as_transformers_does(tmp_path):
  """A Hugging Face template with a `tools` variable gets the tools, assistant tool_calls and
  `tool` messages exactly as transformers' apply_chat_template passes them; its calls are
  read in the Hermes form."""
  from tests.interop import hf_models  # pylint: disable=import-outside-toplevel
  hf_tokenizer = hf_models.make_tokenizer("byte_level")
  hf_tokenizer.chat_template = HERMES_TEMPLATE
  hf_tokenizer.save_pretrained(str(tmp_path))
  tokenizer = tokenizer_lib.get(f"hf:{tmp_path}")
  request = chat_lib.parse_request({"max_tokens": 8, "system": "Be brief.", "tools": [ADD],
                                    "messages": history()})
  ours = chat_lib.render(tokenizer, request.messages, request.system, request.tools)
  theirs = hf_tokenizer.apply_chat_template(
      [{"role": "system", "content": "Be brief."},
       {"role": "user", "content": ASK[0]["content"]},
       {"role": "assistant", "content": "Ok.", "tool_calls": [
           {"id": "toolu_1", "type": "function",
            "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]},
       {"role": "tool", "content": "3", "tool_call_id": "toolu_1"}],
      tools=[{"type": "function", "function": {"name": "add", "description": "a+b",
                                               "parameters": ADD["input_schema"]}}],
      add_generation_prompt=True, tokenize=True, return_dict=False)
  assert ours == list(theirs)
  assert tools_lib.call_format(tokenizer) == tools_lib.HERMES_FORMAT
  text = "Sure." + tools_lib.write_call("add", {"a": 4, "b": 5}, tools_lib.HERMES_FORMAT)
  assert tools_lib.split_calls(text, tools_lib.HERMES_FORMAT) == (
      "Sure.", [{"name": "add", "input": {"a": 4, "b": 5}}])
