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
import urllib.request

import pytest

from lm.infer import chat as chat_lib
from lm.infer import server as server_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIMITS = server_lib.Limits(max_request_bytes=4096, max_tokens=64, max_batch=8)


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
    (b"x" * 5000, 413, "request_too_large"),
])
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
  with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
    results = list(pool.map(lambda r: post(server, r), requests))
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
