"""`lm serve`: the Messages API over HTTP, on localhost unless told otherwise.

    POST /v1/messages   a Messages API request; JSON reply, or server-sent events when
                        "stream": true (message_start, content_block_start,
                        content_block_delta, content_block_stop, message_delta, message_stop)
    POST /v1/messages/count_tokens   {"input_tokens": n} for the same request's prompt
                        (validated alike; max_tokens and the sampling settings not taken)
    GET  /health        {"status": "ok", "model": ..., "queued": n}

Standard library only: `http.server.ThreadingHTTPServer` gives each connection a thread
that parses and validates its request, then hands it to the one engine thread. That thread
takes every request waiting (up to `max_batch`) and decodes them as one batch, posting
snapshots back to their connections every `chunk_tokens` tokens; requests arriving
meanwhile queue for the next batch (at most `max_queue`, then 529 overloaded_error). A
connection whose client has gone (closed while it waits or streams) cancels its request:
its row stops generating at the next chunk, and a batch whose clients have all gone ends.

The request's `model` field is ignored (one model serves all); replies name the served
model. With documents (`lm serve --docs=DIR`), a request's "retrieval" field (true, or
{"top_k": k}; not in the Messages API) puts the k best passages for its last user turn,
numbered, into the system prompt; the reply's "retrieval" field lists them and the ones it
cites as [n] (in a stream: on message_delta). Errors are JSON in the Messages API's shape,
{"type": "error", "error": {"type", "message"}}: 400 for a malformed request (bad JSON,
non-finite numbers, nesting too deep, a bad Content-Length, invalid fields), 401 without the
API key (when one is set), 404 / 405 for an unknown route, 411 / 413 for a missing or too
large body, 500 if generation fails or anything unexpected happens. Every request gets a
reply; a bad one never stops the server.
"""

import collections
import dataclasses
import hmac
import http.server
import json
import math
import queue
import select
import socket
import threading
from typing import Any, Callable, Iterator

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
  cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)


@dataclasses.dataclass
class BatchRecord:
  """What the engine thread ran: one batch, its rows' tokens generated and stop reasons."""
  size: int
  tokens: list[int]
  stop_reasons: list[str | None]


_DONE = object()


class Batcher:
  """The engine thread: batches waiting jobs, runs them, posts snapshots to each job.

  `history` keeps the most recent batches (BatchRecord) for monitoring and tests. Clearing
  `admit` holds the thread once it has taken the next job (`held`) and before it gathers the
  rest of its batch, so that requests queue up behind it (tests use it).
  """

  def __init__(self, chat: chat_lib.Chat, limits: Limits):
    self.chat, self.limits = chat, limits
    self.jobs: queue.Queue = queue.Queue(maxsize=limits.max_queue)
    self.history: collections.deque[BatchRecord] = collections.deque(maxlen=256)
    self.admit = threading.Event()
    self.admit.set()
    self.held: _Job | None = None
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
      self.held = self.jobs.get()
      self.admit.wait()
      batch, self.held = [self.held], None
      while len(batch) < self.limits.max_batch:
        try:
          batch.append(self.jobs.get_nowait())
        except queue.Empty:
          break
      snapshots = None
      try:
        # Chunked even without streaming, so that cancelled rows stop between chunks.
        for snapshots in self.chat.snapshots(
            [j.request for j in batch], [j.prompt for j in batch],
            chunk_tokens=self.limits.chunk_tokens,
            cancelled=lambda batch=batch: [j.cancelled.is_set() for j in batch]):
          for job, completion in zip(batch, snapshots):
            job.updates.put(completion)
      except Exception as e:  # pylint: disable=broad-except
        logging.exception("generation failed")
        for job in batch:
          job.updates.put(e)
      for job in batch:
        job.updates.put(_DONE)
      self.history.append(BatchRecord(
          len(batch), [len(c.tokens) for c in snapshots or []],
          [c.stop_reason for c in snapshots or []]))

  @staticmethod
  def snapshots(job: _Job, connected: Callable[[], bool] = lambda: True,
                poll_s: float = 0.05) -> Iterator[Any]:
    """The job's completion snapshots, up to the final one; re-raises a generation error.
    While it waits it asks `connected()` every `poll_s` seconds; when the client has gone it
    cancels the job and raises ConnectionAbortedError."""
    while True:
      try:
        item = job.updates.get(timeout=poll_s)
      except queue.Empty:
        if not connected():
          job.cancelled.set()
          raise ConnectionAbortedError("the client closed the connection") from None
        continue
      if item is _DONE:
        return
      if isinstance(item, Exception):
        raise item
      yield item
      if item.stop_reason is not None:
        return


class Server(http.server.ThreadingHTTPServer):
  daemon_threads = True
  request_queue_size = 128  # listen() backlog: a burst of clients beyond it waits for SYN retries

  def __init__(self, engine: Any, host: str = "127.0.0.1", port: int = 8000,
               api_key: str | None = None, limits: Limits | None = None, index: Any = None):
    self.chat = chat_lib.Chat(engine, index=index)
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

  def handle_one_request(self) -> None:
    self.replied = False
    super().handle_one_request()

  def send_response(self, code: int, message: str | None = None) -> None:
    self.replied = True
    super().send_response(code, message)

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

  def _answering_errors(self, handler: Callable[[], None]) -> None:
    """Runs handler; an exception that escapes it is answered with a 500 in the API's error
    shape (when no reply has started) rather than a dropped connection."""
    try:
      handler()
    except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
      self.close_connection = True  # the client has gone; nobody to answer
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("unexpected error answering %s %s", self.command, self.path)
      self.close_connection = True
      if not self.replied:
        self._send_error(RequestError(f"internal error: {type(e).__name__}", 500, "api_error"))

  def do_GET(self):  # pylint: disable=invalid-name
    self._answering_errors(self._get)

  def do_POST(self):  # pylint: disable=invalid-name
    self._answering_errors(self._post)

  def _get(self) -> None:
    if self.path.split("?")[0] == "/health":
      self._send_json(200, {"status": "ok", "model": self.server.chat.model_name,
                            "queued": self.server.batcher.jobs.qsize()})
    elif self.path.split("?")[0] in ("/v1/messages", "/v1/messages/count_tokens"):
      self._send_error(RequestError(f"use POST for {self.path.split('?')[0]}", 405))
    else:
      self._send_error(RequestError(f"no route {self.path}", 404, "not_found_error"))

  def _post(self) -> None:
    route = self.path.split("?")[0]
    try:
      if route not in ("/v1/messages", "/v1/messages/count_tokens"):
        raise RequestError(f"no route {self.path}", 404, "not_found_error")
      self._authenticate()
      request, prompt = self._read_request(count_only=route.endswith("/count_tokens"))
      if route.endswith("/count_tokens"):
        self._send_json(200, {"input_tokens": len(prompt)})
        return
      job = _Job(request, prompt)
      self.server.batcher.submit(job)
    except RequestError as e:
      self._send_error(e)
      return
    if request.stream:  # request.model is ignored: replies name the one model served
      self._stream(job)
      return
    try:
      *_, final = Batcher.snapshots(job, self._connected)
    except ConnectionAbortedError:
      return
    except Exception as e:  # pylint: disable=broad-except
      self._send_error(RequestError(f"generation failed: {e}", 500, "api_error"))
      return
    self._send_json(200, self.server.chat.message(final, request).to_dict())

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

  def _read_request(self, count_only: bool = False) -> tuple[chat_lib.ChatRequest, list[int]]:
    limit = self.server.limits.max_request_bytes
    length = self.headers.get("content-length")
    if length is None:
      raise RequestError("a Content-Length header is required", 411)
    if not (length.strip().isascii() and length.strip().isdigit()):
      self.close_connection = True  # the body's end is unknown
      raise RequestError(f"Content-Length: {length[:40]!r} is not a decimal byte count")
    length = int(length)
    if length > limit:
      self._drain(length)
      raise RequestError(f"the request body has {length} bytes; the limit is {limit}", 413,
                         "request_too_large")
    body = parse_json(self.rfile.read(length))
    request = chat_lib.parse_request(body, self.server.limits.max_tokens, count_only)
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

  def _stream(self, job: _Job) -> None:
    self.send_response(200)
    self.send_header("Content-Type", "text/event-stream")
    self.send_header("Cache-Control", "no-cache")
    self.send_header("Connection", "close")
    self.end_headers()
    try:
      for event in self.server.chat.events(Batcher.snapshots(job, self._connected),
                                           job.request, len(job.prompt)):
        self._event(event)
    except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
      job.cancelled.set()  # the client left: its row stops at the next chunk
      self.close_connection = True
      return
    except Exception as e:  # pylint: disable=broad-except
      self._event(RequestError(f"generation failed: {e}", 500, "api_error").to_dict())

  def _connected(self) -> bool:
    """False once the client has closed its end (readable with nothing to read: EOF).
    A client that half-closes its socket after the request counts as gone too."""
    try:
      poller = select.poll()  # poll, not select: no limit on the descriptor's number
      poller.register(self.connection, select.POLLIN)
      return not poller.poll(0) or bool(self.connection.recv(1, socket.MSG_PEEK))
    except OSError:
      return False

  def _event(self, event: dict) -> None:
    self.wfile.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
    self.wfile.flush()


def _reject_constant(name: str) -> None:
  raise RequestError(f"the body is not valid JSON: {name} is not a number JSON allows")


def _finite_float(text: str) -> float:
  value = float(text)
  if not math.isfinite(value):
    raise RequestError(f"the body has a number out of range: {text[:40]}")
  return value


def parse_json(data: bytes) -> Any:
  """The JSON value of a request body; RequestError (400) for anything that is not strict
  JSON with finite numbers, or that nests too deeply to parse."""
  try:
    return json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
  except RequestError:
    raise
  except RecursionError:
    raise RequestError("the body nests too deeply to parse") from None
  except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError, int digits over the limit
    raise RequestError(f"the body is not valid JSON: {e}") from None


def serve(engine: Any, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          limits: Limits | None = None, index: Any = None) -> None:
  """Serves until interrupted; `index` (lm.infer.retrieval.Index): the documents requests
  with "retrieval" draw passages from."""
  server = Server(engine, host, port, api_key, limits, index)
  print(f"Serving {server.chat.model_name} on {server.url} (POST /v1/messages, GET /health)",
        flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
