"""Tests for lm/infer/server.py over real HTTP on loopback: valid, streaming, malformed,
oversized, unauthenticated and concurrent requests, and `lm serve` itself."""

import concurrent.futures
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from lm.infer import chat as chat_lib
from lm.infer import server as server_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIMITS = server_lib.Limits(max_request_bytes=1 << 17, max_tokens=64, max_batch=8)
MESSAGES = b'"messages": [{"role": "user", "content": "Hello"}]'


def hello(content="Hello", **fields):
  return {"max_tokens": 16, "temperature": 0,
          "messages": [{"role": "user", "content": content}], **fields}


def start(engine, **kwargs) -> server_lib.Server:
  server = server_lib.Server(engine, "127.0.0.1", 0, limits=LIMITS, **kwargs)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server


@pytest.fixture(scope="module")
def server(engine):
  server = start(engine)
  yield server
  server.shutdown()
  server.server_close()


def post(server, body, headers=None, path="/v1/messages"):
  """(status, parsed JSON or raw text) of a POST; `body` is a dict (JSON) or bytes."""
  data = body if isinstance(body, bytes) else json.dumps(body).encode()
  request = urllib.request.Request(server.url + path, data=data, method="POST",
                                   headers={"content-type": "application/json", **(headers or {})})
  try:
    with urllib.request.urlopen(request, timeout=120) as response:
      status, text, kind = response.status, response.read().decode(), response.headers.get(
          "content-type")
  except urllib.error.HTTPError as e:
    status, text, kind = e.code, e.read().decode(), e.headers.get("content-type")
  return status, json.loads(text) if kind == "application/json" else text


def get(server, path):
  try:
    with urllib.request.urlopen(server.url + path, timeout=30) as response:
      return response.status, json.loads(response.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def sse_events(text: str) -> list[dict]:
  events = []
  for block in text.strip().split("\n\n"):
    lines = dict(line.split(": ", 1) for line in block.split("\n"))
    event = json.loads(lines["data"])
    assert event["type"] == lines["event"]
    events.append(event)
  return events


def assert_error(status, body, expected_status, kind):
  assert status == expected_status, body
  assert body["type"] == "error" and body["error"]["type"] == kind
  assert body["error"]["message"]


def test_health(server):
  status, body = get(server, "/health")
  assert status == 200 and body["status"] == "ok" and body["queued"] == 0


def test_a_valid_request_gets_a_message(server, engine):
  status, body = post(server, hello(system="Be brief."))
  assert status == 200
  assert body["type"] == "message" and body["role"] == "assistant"
  assert body["content"][0]["type"] == "text"
  assert body["stop_reason"] in chat_lib.STOP_REASONS
  expected = chat_lib.Client(engine=engine).messages.create(**hello(system="Be brief."))
  assert body["content"][0]["text"] == expected.content[0].text
  assert body["usage"] == {"input_tokens": expected.usage.input_tokens,
                           "output_tokens": expected.usage.output_tokens}


def test_streaming_sends_server_sent_events(server):
  status, plain = post(server, hello(max_tokens=40))
  status, text = post(server, hello(max_tokens=40, stream=True))
  assert status == 200
  events = sse_events(text)
  kinds = [e["type"] for e in events]
  assert kinds[:2] == ["message_start", "content_block_start"]
  assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
  deltas = [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"]
  assert "".join(deltas) == plain["content"][0]["text"]
  assert events[-2]["delta"]["stop_reason"] == plain["stop_reason"]


@pytest.mark.parametrize("body,status,kind", [
    (b"{not json", 400, "invalid_request_error"),
    (b"\xff\xfe", 400, "invalid_request_error"),
    ({"messages": [{"role": "user", "content": "x"}]}, 400, "invalid_request_error"),
    (hello(max_tokens=65), 400, "invalid_request_error"),  # over the server's limit
    (hello(messages=[{"role": "assistant", "content": "x"}]), 400, "invalid_request_error"),
    (hello(content="x" * 600), 400, "invalid_request_error"),  # beyond the context
    (b"x" * (LIMITS.max_request_bytes + 1), 413, "request_too_large"),
    # Non-finite numbers: JSON has none; Python's json module would parse them.
    (b'{"max_tokens": 16, "top_p": NaN, ' + MESSAGES + b"}", 400, "invalid_request_error"),
    (b'{"max_tokens": 16, "temperature": Infinity, ' + MESSAGES + b"}", 400,
     "invalid_request_error"),
    (b'{"max_tokens": 16, "temperature": -Infinity, ' + MESSAGES + b"}", 400,
     "invalid_request_error"),
    (b'{"max_tokens": 16, "temperature": 1e400, ' + MESSAGES + b"}", 400,
     "invalid_request_error"),
    (b'{"max_tokens": 16, "temperature": ' + b"9" * 400 + b", " + MESSAGES + b"}", 400,
     "invalid_request_error"),  # an int too large for a float
    (b'{"max_tokens": 16, "top_k": ' + b"9" * 30 + b", " + MESSAGES + b"}", 400,
     "invalid_request_error"),  # beyond int32
    (b'{"max_tokens": ' + b"9" * 5000 + b", " + MESSAGES + b"}", 400,
     "invalid_request_error"),  # more digits than Python converts
    (b"[" * 100_000, 400, "invalid_request_error"),  # deeper than the parser recurses
], ids=["bad_json", "bad_utf8", "no_max_tokens", "max_tokens_over_limit", "assistant_first",
        "beyond_context", "too_large", "nan", "infinity", "minus_infinity", "overflow_float",
        "huge_int_float", "huge_top_k", "too_many_digits", "deep_nesting"])
def test_malformed_and_oversized_requests_get_json_errors(server, body, status, kind):
  got_status, got = post(server, body)
  assert_error(got_status, got, status, kind)
  assert get(server, "/health")[0] == 200  # still serving


def test_unknown_routes_and_methods(server):
  assert_error(*post(server, hello(), path="/v1/other"), 404, "not_found_error")
  assert_error(*get(server, "/nope"), 404, "not_found_error")
  assert_error(*get(server, "/v1/messages"), 405, "invalid_request_error")


def test_missing_content_length_gets_411(server):
  host, port = server.server_address[:2]
  with socket.create_connection((host, port), timeout=30) as s:
    s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = b""
    while chunk := s.recv(4096):
      reply += chunk
  head, body = reply.split(b"\r\n\r\n", 1)
  assert head.startswith(b"HTTP/1.0 411") or head.startswith(b"HTTP/1.1 411")
  assert json.loads(body)["type"] == "error"


def raw_request(server, head: bytes, body: bytes = b"") -> tuple[bytes, bytes]:
  """(status line and headers, body) of a hand-written request on a fresh connection."""
  host, port = server.server_address[:2]
  with socket.create_connection((host, port), timeout=30) as s:
    s.sendall(head + b"\r\n\r\n" + body)
    reply = b""
    while chunk := s.recv(4096):
      reply += chunk
  head, body = reply.split(b"\r\n\r\n", 1)
  return head, body


@pytest.mark.parametrize("length", ["\u00b2", "-5", "1_0", "0x10", "\u0661\u0662"],
                         ids=["superscript_two", "negative", "underscore", "hex", "arabic_digits"])
def test_a_bad_content_length_gets_400(server, length):
  body = json.dumps(hello()).encode()
  head, reply = raw_request(server, b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Length: " + length.encode() , body)
  assert head.split(b" ")[1] == b"400", head
  assert_error(400, json.loads(reply), 400, "invalid_request_error")
  assert get(server, "/health")[0] == 200


def test_the_model_field_is_ignored_and_replies_name_the_served_model(server):
  status, body = post(server, hello(model="some-other-model"))
  assert status == 200 and body["model"] == server.chat.model_name != "some-other-model"
  status, text = post(server, hello(model="some-other-model", stream=True))
  assert sse_events(text)[0]["message"]["model"] == server.chat.model_name
  assert_error(*post(server, hello(model=7)), 400, "invalid_request_error")


def test_an_unexpected_error_is_answered_with_500_in_the_error_shape(engine):
  server = start(engine)
  def broken(request):
    raise RuntimeError("a bug")
  server.chat.prompt = broken
  try:
    assert_error(*post(server, hello()), 500, "api_error")
    assert get(server, "/health")[0] == 200
  finally:
    server.shutdown()
    server.server_close()


def test_a_client_that_disconnects_stops_its_decoding(server):
  """The stream has started (headers sent) when the client closes; its row must end at the
  next chunk with stop_reason "cancelled", not run to max_tokens."""
  request = hello(max_tokens=64)
  status, plain = post(server, request)
  assert status == 200 and plain["usage"]["output_tokens"] == 64  # uncancelled: all 64
  batcher = server.batcher
  batcher.admit.clear()  # the engine thread takes the request and waits
  try:
    host, port = server.server_address[:2]
    data = json.dumps({**request, "stream": True}).encode()
    with socket.create_connection((host, port), timeout=30) as s:
      s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: "
                + str(len(data)).encode() + b"\r\n\r\n" + data)
      assert s.recv(64).startswith(b"HTTP/1.0 200")  # the stream has begun
    deadline = time.monotonic() + 30
    while not (batcher.held is not None and batcher.held.cancelled.is_set()):
      assert time.monotonic() < deadline, "the server never noticed the client leave"
      time.sleep(0.01)
    runs = len(batcher.history)
  finally:
    batcher.admit.set()
  while len(batcher.history) == runs:
    assert time.monotonic() < deadline
    time.sleep(0.01)
  record = batcher.history[-1]
  assert record.size == 1 and record.stop_reasons == ["cancelled"]
  assert record.tokens[0] < 64


def test_api_key_is_required_when_set(engine):
  server = start(engine, api_key="s3cret")
  try:
    assert_error(*post(server, hello()), 401, "authentication_error")
    assert_error(*post(server, hello(), {"x-api-key": "wrong"}), 401, "authentication_error")
    assert post(server, hello(), {"x-api-key": "s3cret"})[0] == 200
    assert post(server, hello(), {"authorization": "Bearer s3cret"})[0] == 200
  finally:
    server.shutdown()
    server.server_close()


def test_concurrent_requests_are_batched_and_all_answered(server, engine):
  client = chat_lib.Client(engine=engine)
  requests = [hello(content=f"Question {i}", max_tokens=(8, 12, 16)[i % 3], stream=i % 3 == 0)
              for i in range(10)]
  expected = [client.messages.create(**{**r, "stream": False}).content[0].text for r in requests]
  batcher = server.batcher
  batcher.admit.clear()  # hold the engine thread until every request has queued
  try:
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
      futures = [pool.submit(post, server, r) for r in requests]
      deadline = time.monotonic() + 60
      while batcher.jobs.qsize() < len(requests) - 1:  # one held by the engine thread
        assert time.monotonic() < deadline, batcher.jobs.qsize()
        time.sleep(0.01)
      runs = len(batcher.history)
      batcher.admit.set()
      results = [f.result() for f in futures]
  finally:
    batcher.admit.set()
  # Ten queued requests, at most max_batch=8 a batch: two batches, not ten.
  assert [r.size for r in list(batcher.history)[runs:]] == [8, 2]
  for request, (status, body), want in zip(requests, results, expected):
    assert status == 200, body
    if request["stream"]:
      text = "".join(e["delta"]["text"] for e in sse_events(body)
                     if e["type"] == "content_block_delta")
    else:
      text = body["content"][0]["text"]
    assert text == want
  assert get(server, "/health")[1]["queued"] == 0


def test_lm_serve_command(workdir):
  process = subprocess.Popen(
      [sys.executable, "-m", "lm", "serve", f"--workdir={workdir}", "--port=0"], cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  try:
    line = process.stdout.readline()
    assert " on http://127.0.0.1:" in line, (line, process.stderr.read() if process.poll() else "")
    url = line.split(" on ", 1)[1].split()[0]
    connection = http.client.HTTPConnection(url.split("//")[1], timeout=120)
    connection.request("POST", "/v1/messages", json.dumps(hello(max_tokens=4)),
                       {"content-type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    assert json.loads(response.read())["usage"]["output_tokens"] <= 4
  finally:
    process.terminate()
    process.wait(timeout=30)
