"""Tests for lm/infer/chat.py and the byte tokenizer's chat template: rendering, request
validation, the Messages-API-shaped client (plain and streaming), `lm chat`."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest

import lm
from lm.data.tokenizer import ByteTokenizer
from lm.infer import chat as chat_lib
from lm.infer.chat import RequestError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def client(engine):
  return lm.Client(engine=engine)


def test_byte_chat_template_uses_role_tokens():
  tok = ByteTokenizer()
  s = tok.special_ids
  ids = tok.render_chat([{"role": "system", "content": "S"}, {"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "yo"}], add_generation_prompt=True)
  assert ids.tolist() == [tok.bos_id, s["<system>"], ord("S"), s["<end_of_turn>"],
                          s["<user>"], ord("h"), ord("i"), s["<end_of_turn>"],
                          s["<assistant>"], ord("y"), ord("o"), s["<end_of_turn>"],
                          s["<assistant>"]]
  assert tok.render_chat(HELLO).tolist()[-1] == s["<end_of_turn>"]  # no generation prompt
  with pytest.raises(ValueError, match="role"):
    tok.render_chat([{"role": "tool", "content": "x"}])


def test_render_adds_system_and_continues_a_final_assistant_turn():
  tok = ByteTokenizer()
  ids = chat_lib.render(tok, HELLO + [{"role": "assistant", "content": "Sure"}], system="Be kind")
  expected = tok.render_chat([{"role": "system", "content": "Be kind"}] + HELLO,
                             add_generation_prompt=True).tolist() + list(b"Sure")
  assert ids == expected


class TextTemplateTokenizer(ByteTokenizer):
  """Like an HF tokenizer: render_chat returns text, which render then encodes."""

  def render_chat(self, messages, add_generation_prompt=False):
    text = "".join(f"[{m['role']}]{m['content']}" for m in messages)
    return text + ("[assistant]" if add_generation_prompt else "")


def test_render_encodes_text_templates():
  ids = chat_lib.render(TextTemplateTokenizer(), HELLO, system="S")
  assert bytes(ids).decode() == "[system]S[user]Hello[assistant]"


def test_stop_tokens_are_end_of_turn_and_eos():
  tok = ByteTokenizer()
  assert sorted(chat_lib.stop_token_ids(tok)) == sorted([tok.eos_id,
                                                         tok.special_ids["<end_of_turn>"]])


@pytest.mark.parametrize("body,message", [
    ([], "JSON object"),
    ({"messages": HELLO}, "max_tokens: field required"),
    ({"max_tokens": 0, "messages": HELLO}, "max_tokens"),
    ({"max_tokens": "5", "messages": HELLO}, "max_tokens: must be an integer"),
    ({"max_tokens": 99999, "messages": HELLO}, "max_tokens"),
    ({"max_tokens": 5}, "messages"),
    ({"max_tokens": 5, "messages": []}, "messages"),
    ({"max_tokens": 5, "messages": [{"role": "assistant", "content": "x"}]}, "alternate"),
    ({"max_tokens": 5, "messages": HELLO * 2}, "alternate"),
    ({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "system"),
    ({"max_tokens": 5, "messages": [{"role": "user"}]}, "content"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]}, "text"),
    ({"max_tokens": 5, "messages": HELLO, "temperature": -1}, "temperature"),
    ({"max_tokens": 5, "messages": HELLO, "top_p": 0}, "top_p"),
    ({"max_tokens": 5, "messages": HELLO, "stop_sequences": "x"}, "stop_sequences"),
    ({"max_tokens": 5, "messages": HELLO, "stream": "yes"}, "stream"),
    ({"max_tokens": 5, "messages": HELLO, "thinking": {}}, "not supported"),
    ({"max_tokens": 5, "messages": HELLO, "colour": 1}, "extra inputs"),
    # Python callers can pass what JSON cannot: non-finite and oversized numbers.
    ({"max_tokens": 5, "messages": HELLO, "top_p": float("nan")}, "top_p"),
    ({"max_tokens": 5, "messages": HELLO, "temperature": float("nan")}, "temperature"),
    ({"max_tokens": 5, "messages": HELLO, "temperature": float("inf")}, "temperature"),
    ({"max_tokens": 5, "messages": HELLO, "temperature": 10**400}, "temperature"),
    ({"max_tokens": 5, "messages": HELLO, "top_k": 2**31}, "top_k"),
])
def test_malformed_requests_name_the_field(body, message):
  with pytest.raises(RequestError, match=message) as error:
    chat_lib.parse_request(body, max_tokens_limit=1000)
  assert error.value.status == 400 and error.value.type == "invalid_request_error"


def test_parse_request_accepts_blocks_and_defaults():
  request = chat_lib.parse_request({
      "model": "m", "max_tokens": 5, "system": [{"type": "text", "text": "S"}],
      "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                {"type": "text", "text": "b"}]}],
      "metadata": {"user_id": "u"}})
  assert request.messages == [{"role": "user", "content": "ab"}] and request.system == "S"
  assert request.sampling.temperature == 1.0 and not request.stream


def test_create_returns_a_messages_api_response(client):
  r = client.messages.create(max_tokens=16, messages=HELLO, system="Be brief.", temperature=0)
  assert r.type == "message" and r.role == "assistant" and r.id.startswith("msg_")
  assert r.content[0].type == "text" and isinstance(r.content[0].text, str)
  assert r.stop_reason in chat_lib.STOP_REASONS
  assert r.usage.input_tokens == len(chat_lib.render(client.chat.tokenizer, HELLO, "Be brief."))
  assert 1 <= r.usage.output_tokens <= 16
  d = r.to_dict()
  assert list(d) == ["id", "type", "role", "content", "model", "stop_reason", "stop_sequence",
                     "usage"]
  assert d["content"] == [{"type": "text", "text": r.content[0].text}]
  again = client.messages.create(max_tokens=16, messages=HELLO, system="Be brief.",
                                 temperature=0)
  assert again.content[0].text == r.content[0].text  # greedy is deterministic
  with pytest.raises(RequestError, match="too long"):
    client.messages.create(max_tokens=500, messages=[{"role": "user", "content": "x" * 100}])


def some_character(text: str) -> str:
  """A character of the reply, past its first one where possible (noise models babble)."""
  candidates = [c for c in text[1:] or text if c != "\ufffd"]
  assert candidates, f"the greedy reply {text!r} has no whole character to stop at"
  return candidates[0]


def test_stop_sequences_end_the_reply(client):
  full = client.messages.create(max_tokens=32, messages=HELLO, temperature=0)
  text = full.content[0].text
  stop = some_character(text)
  r = client.messages.create(max_tokens=32, messages=HELLO, temperature=0, stop_sequences=[stop])
  assert r.stop_reason == "stop_sequence" and r.stop_sequence == stop
  assert r.content[0].text == text[:text.index(stop)]
  assert r.usage.output_tokens < full.usage.output_tokens


def test_streaming_events_spell_out_the_same_reply(client):
  full = client.messages.create(max_tokens=32, messages=HELLO, temperature=0)
  events = list(client.messages.create(max_tokens=32, messages=HELLO, temperature=0,
                                       stream=True))
  kinds = [e["type"] for e in events]
  assert kinds[:2] == ["message_start", "content_block_start"]
  assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
  assert set(kinds[2:-3]) <= {"content_block_delta"}
  text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
  assert text == full.content[0].text
  assert events[-2]["delta"]["stop_reason"] == full.stop_reason
  assert events[-2]["usage"]["output_tokens"] == full.usage.output_tokens
  assert events[0]["message"]["usage"]["input_tokens"] == full.usage.input_tokens


def test_text_deltas_hold_back_possible_stop_sequences_and_broken_characters():
  deltas = chat_lib.TextDeltas(["STOP"])
  assert deltas.update("hello wo", final=False) == "hello"  # 3 chars held: could start STOP
  assert deltas.update("hello world\ufffd", final=False) == " wo"
  assert deltas.update("hello world!", final=True) == "rld!"
  assert chat_lib.TextDeltas([]).update("ab\ufffd", final=False) == "ab"


def test_interactive_chat_keeps_history(client):
  lines = iter(["Hello", "", "How are you?", "/reset", "Again", "/exit", "never read"])
  out = io.StringIO()
  history = chat_lib.interactive(client, system="S", max_tokens=8, temperature=0.0,
                                 input_fn=lambda prompt: next(lines), output=out)
  assert [m["role"] for m in history] == ["user", "assistant"]  # after /reset: one exchange
  assert history[0]["content"] == "Again"
  assert out.getvalue().count("assistant> ") == 3


def test_import_lm_stays_light():
  code = "import sys, lm; assert 'jax' not in sys.modules; print(lm.Client.__name__)"
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "Client"


def test_lm_chat_command(workdir):
  result = subprocess.run(
      [sys.executable, "-m", "lm", "chat", f"--workdir={workdir}", "--max_new_tokens=8",
       "--temperature=0", "--system=Be brief."], input="Hello\nAnd then?\n/exit\n",
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.count("assistant> ") == 2
