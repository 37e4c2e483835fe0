"""`lm serve`: the Messages API over HTTP, on localhost unless told otherwise.

    POST /v1/messages   a Messages API request; JSON reply, or server-sent events when
                        "stream": true (message_start, content_block_start,
                        content_block_delta, content_block_stop, message_delta, message_stop)
    GET  /health        {"status": "ok", "model": ..., "queued": n}

Standard library only: `http.server.ThreadingHTTPServer` gives each connection a thread
that parses and validates its request, then hands it to the one engine thread. That thread
takes every request waiting (up to `max_batch`) and decodes them as one batch, streaming
snapshots back to their connections every `chunk_tokens` tokens; requests arriving
meanwhile queue for the next batch (at most `max_queue`, then 529 overloaded_error).

Errors are JSON in the Messages API's shape, {"type": "error", "error": {"type", "message"}}:
400 for a malformed request, 401 without the API key (when one is set), 404 / 405 for an
unknown route, 411 / 413 for a missing or too large body, 500 if generation fails. A bad
request never stops the server.
"""

import dataclasses
import hmac
import http.server
import json
import queue
import threading
from typing import Any, Iterator

from absl import logging

from lm.infer import chat as chat_lib
from lm.infer.chat import RequestError


@dataclasses.dataclass
class Limits:
  max_request_bytes: int = 1 << 20   # larger bodies get 413
  max_tokens: int = 4096             # larger max_tokens get 400 (the context bounds it too)
  max_batch: int = 16                # requests decoded together
  max_queue: int = 64                # requests waiting beyond that get 529
  chunk_tokens: int = 16             # streaming granularity


@dataclasses.dataclass
class _Job:
  request: chat_lib.ChatRequest
  prompt: list[int]
  updates: queue.Queue = dataclasses.field(default_factory=queue.Queue)


_DONE = object()


class Batcher:
  """The engine thread: batches waiting jobs, runs them, posts snapshots to each job."""

  def __init__(self, chat: chat_lib.Chat, limits: Limits):
    self.chat, self.limits = chat, limits
    self.jobs: queue.Queue = queue.Queue(maxsize=limits.max_queue)
    self.thread = threading.Thread(target=self._run, name="lm-engine", daemon=True)
    self.thread.start()

  def submit(self, job: _Job) -> None:
    try:
      self.jobs.put_nowait(job)
    except queue.Full:
      raise RequestError(f"{self.limits.max_queue} requests are waiting; try again later",
                         529, "overloaded_error") from None

  def _run(self) -> None:
    while True:
      batch = [self.jobs.get()]
      while len(batch) < self.limits.max_batch:
        try:
          batch.append(self.jobs.get_nowait())
        except queue.Empty:
          break
      chunk = self.limits.chunk_tokens if any(j.request.stream for j in batch) else None
      try:
        for snapshots in self.chat.snapshots([j.request for j in batch],
                                             [j.prompt for j in batch], chunk_tokens=chunk):
          for job, completion in zip(batch, snapshots):
            job.updates.put(completion)
      except Exception as e:  # pylint: disable=broad-except
        logging.exception("generation failed")
        for job in batch:
          job.updates.put(e)
      for job in batch:
        job.updates.put(_DONE)

  @staticmethod
  def snapshots(job: _Job) -> Iterator[Any]:
    """The job's completion snapshots, up to the final one; re-raises a generation error."""
    while True:
      item = job.updates.get()
      if item is _DONE:
        return
      if isinstance(item, Exception):
        raise item
      yield item
      if item.stop_reason is not None:
        return


class Server(http.server.ThreadingHTTPServer):
  daemon_threads = True

  def __init__(self, engine: Any, host: str = "127.0.0.1", port: int = 8000,
               api_key: str | None = None, limits: Limits | None = None):
    self.chat = chat_lib.Chat(engine)
    self.api_key = api_key or None
    self.limits = limits or Limits()
    self.batcher = Batcher(self.chat, self.limits)
    super().__init__((host, port), _Handler)

  @property
  def url(self) -> str:
    host, port = self.server_address[:2]
    return f"http://{host}:{port}"


class _Handler(http.server.BaseHTTPRequestHandler):
  server: Server
  timeout = 60  # seconds a connection may sit idle while sending its request
  server_version = "lm"

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    logging.info("%s " + format, self.address_string(), *args)

  def _send_json(self, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.send_header("Connection", "close")
    self.end_headers()
    self.wfile.write(data)

  def _send_error(self, error: RequestError) -> None:
    self._send_json(error.status, error.to_dict())

  def do_GET(self):  # pylint: disable=invalid-name
    if self.path.split("?")[0] == "/health":
      self._send_json(200, {"status": "ok", "model": self.server.chat.model_name,
                            "queued": self.server.batcher.jobs.qsize()})
    elif self.path.split("?")[0] == "/v1/messages":
      self._send_error(RequestError("use POST for /v1/messages", 405))
    else:
      self._send_error(RequestError(f"no route {self.path}", 404, "not_found_error"))

  def do_POST(self):  # pylint: disable=invalid-name
    try:
      if self.path.split("?")[0] != "/v1/messages":
        raise RequestError(f"no route {self.path}", 404, "not_found_error")
      self._authenticate()
      request, prompt = self._read_request()
      job = _Job(request, prompt)
      self.server.batcher.submit(job)
    except RequestError as e:
      self._send_error(e)
      return
    name = request.model or self.server.chat.model_name
    if request.stream:
      self._stream(job, name)
      return
    try:
      *_, final = Batcher.snapshots(job)
    except Exception as e:  # pylint: disable=broad-except
      self._send_error(RequestError(f"generation failed: {e}", 500, "api_error"))
      return
    self._send_json(200, chat_lib.to_message(final, name).to_dict())

  def _authenticate(self) -> None:
    key = self.server.api_key
    if key is None:
      return
    given = self.headers.get("x-api-key") or ""
    bearer = self.headers.get("authorization") or ""
    if bearer.lower().startswith("bearer "):
      given = given or bearer[7:].strip()
    if not hmac.compare_digest(given.encode(), key.encode()):
      raise RequestError("invalid or missing API key (x-api-key header)", 401,
                         "authentication_error")

  def _read_request(self) -> tuple[chat_lib.ChatRequest, list[int]]:
    limit = self.server.limits.max_request_bytes
    length = self.headers.get("content-length")
    if length is None or not length.strip().isdigit():
      raise RequestError("a Content-Length header is required", 411)
    length = int(length)
    if length > limit:
      self._drain(length)
      raise RequestError(f"the request body has {length} bytes; the limit is {limit}", 413,
                         "request_too_large")
    try:
      body = json.loads(self.rfile.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise RequestError(f"the body is not valid JSON: {e}") from None
    request = chat_lib.parse_request(body, self.server.limits.max_tokens)
    return request, self.server.chat.prompt(request)

  def _drain(self, length: int) -> None:
    """Reads a rejected body (up to 64 MiB) so that the client sees the reply, not a reset."""
    if length > 64 << 20:
      self.close_connection = True
      return
    while length > 0:
      data = self.rfile.read(min(length, 1 << 16))
      if not data:
        return
      length -= len(data)

  def _stream(self, job: _Job, name: str) -> None:
    self.send_response(200)
    self.send_header("Content-Type", "text/event-stream")
    self.send_header("Cache-Control", "no-cache")
    self.send_header("Connection", "close")
    self.end_headers()
    try:
      for event in chat_lib.stream_events(Batcher.snapshots(job), job.request, name,
                                          len(job.prompt)):
        self._event(event)
    except (BrokenPipeError, ConnectionResetError):
      return  # the client left; its rows finish with the batch
    except Exception as e:  # pylint: disable=broad-except
      self._event(RequestError(f"generation failed: {e}", 500, "api_error").to_dict())

  def _event(self, event: dict) -> None:
    self.wfile.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
    self.wfile.flush()


def serve(engine: Any, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          limits: Limits | None = None) -> None:
  """Serves until interrupted."""
  server = Server(engine, host, port, api_key, limits)
  print(f"Serving {server.chat.model_name} on {server.url} (POST /v1/messages, GET /health)",
        flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
