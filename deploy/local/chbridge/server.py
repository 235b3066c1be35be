"""The ClickHouse HTTP interface, served over the engine.

What a request may carry, as ClickHouse's HTTP handler reads it (and as the official clients send
it):
- the query in the `query` URL parameter, in the POST body, or both (concatenated), or in the
  `query` field of a `multipart/form-data` body whose `param_<name>` fields are server-side
  parameters (`param_<name>` also works in the URL);
- an INSERT's data as the body after a `query=INSERT ... FORMAT <fmt>` URL parameter, in
  compressed-block framing when `decompress=1`;
- `database`, `default_format`, `query_id`, `compress=1` (answer in compressed-block framing) and
  any ClickHouse setting, as URL parameters applied to that query only;
- credentials in `X-ClickHouse-User`/`X-ClickHouse-Key`, basic auth, or `user`/`password`.

Errors answer with ClickHouse's status mapping, `X-ClickHouse-Exception-Code` and the
`Code: N. DB::Exception: ...` text. An error after a streamed result has started is written the
way ClickHouse 25.11+ does: the `X-ClickHouse-Exception-Tag` header announced a tag, and the body
ends with the `__exception__` block carrying it.
"""

import base64
import email.parser
import email.policy
import hmac
import json
import logging
import re
import secrets
import string
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from . import framing
from .engine import EngineError

log = logging.getLogger("chbridge")

# URL parameters that belong to the HTTP handler, not to the settings of the query.
HANDLER_PARAMS = {
    "query", "database", "default_format", "query_id", "compress", "decompress", "user",
    "password", "quota_key", "session_id", "session_timeout", "session_check", "role",
    "buffer_size", "wait_end_of_query", "stacktrace", "client_protocol_version",
}
INSERT_WITH_FORMAT = re.compile(
    r"^\s*(INSERT\b.*?)\s+FORMAT\s+([A-Za-z][A-Za-z0-9_]*)\s*$", re.IGNORECASE | re.DOTALL
)
CONTENT_TYPES = {
    "RowBinary": "application/octet-stream",
    "RowBinaryWithNamesAndTypes": "application/octet-stream",
    "RowBinaryWithNames": "application/octet-stream",
    "Native": "application/octet-stream",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
}
READ_SIZE = 1024 * 1024


class BodyReader:
    """The request body as a byte stream, de-chunked, never read further than asked."""

    def __init__(self, rfile, headers, limit_error):
        self._rfile = rfile
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self._remaining = int(headers.get("Content-Length") or 0) if not self._chunked else 0
        self._chunk_left = 0
        self._eof = not self._chunked and self._remaining == 0
        self._buffer = b""
        self._limit_error = limit_error

    @property
    def consumed(self) -> bool:
        return self._eof and not self._buffer

    def _next_piece(self, size: int) -> bytes:
        if self._eof:
            return b""
        if not self._chunked:
            data = self._rfile.read(min(size, self._remaining))
            self._remaining -= len(data)
            if not data or self._remaining == 0:
                self._eof = True
            return data
        if self._chunk_left == 0:
            line = self._rfile.readline(65537)
            try:
                self._chunk_left = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise self._limit_error("CANNOT_READ_ALL_DATA", "malformed chunked encoding")
            if self._chunk_left == 0:
                while self._rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailer fields: nothing in them for us
                self._eof = True
                return b""
        data = self._rfile.read(min(size, self._chunk_left))
        if not data:
            raise self._limit_error("CANNOT_READ_ALL_DATA", "connection closed inside a chunk")
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            self._rfile.readline(3)
        return data

    def read_some(self, size: int = READ_SIZE) -> bytes:
        if self._buffer:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
            return data
        return self._next_piece(size)

    def read_exact(self, size: int) -> bytes:
        parts, have = [], 0
        while have < size:
            data = self.read_some(size - have)
            if not data:
                break
            parts.append(data)
            have += len(data)
        return b"".join(parts)

    def read_all(self, limit: int) -> bytes:
        data = self.read_exact(limit + 1)
        if len(data) > limit:
            raise self._limit_error("QUERY_IS_TOO_LARGE", f"request body is over {limit} bytes")
        return data

    def discard(self, limit: int):
        try:
            while limit > 0 and (data := self.read_some()):
                limit -= len(data)
        except (EngineError, OSError):
            pass  # the connection is closed after the error anyway

    def chunks(self):
        while True:
            data = self.read_some()
            if not data:
                return
            yield data


def parse_multipart(body: bytes, content_type: str) -> dict[str, str]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[name] = part.get_payload(decode=True).decode("utf-8")
    return fields


def exception_block(tag: str, message: str) -> bytes:
    """The mid-stream error trailer of ClickHouse 25.11+ (WriteBufferFromHTTPServerResponse)."""
    text = message + "\n"
    length = len(text.encode())
    return f"\r\n__exception__\r\n{tag}\r\n{text}{length} {tag}\r\n__exception__\r\n".encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "flowhouse-chbridge"
    # Idle keep-alive connections are closed after this; the clickhouse crate drops idle pooled
    # connections after 2 s, so it never meets a closed one.
    timeout = 60

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("%s " + format, self.address_string(), *args)

    @property
    def engine(self):
        return self.server.engine

    def do_GET(self):
        self.route(readonly=True)

    def do_POST(self):
        self.route(readonly=False)

    def route(self, readonly: bool):
        url = urlsplit(self.path)
        if url.path == "/ping" or (url.path == "/" and not url.query and self.command == "GET"):
            self.send_plain(200, b"Ok.\n")
            return
        if url.path != "/":
            self.close_connection = True
            self.send_plain(404, b"There is no handle " + url.path.encode() + b"\n")
            return
        started = time.monotonic()
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        query_id = params.get("query_id") or str(uuid.uuid4())
        body = BodyReader(self.rfile, self.headers, self.engine.error)
        outcome = "ok"
        try:
            with self.server.slots:
                outcome = self.run(params, body, readonly, query_id)
        except EngineError as error:
            outcome = f"error {error.code}"
            # Read what the client is still sending (bounded) so that it sees the error rather
            # than a reset connection.
            body.discard(self.server.max_query_size)
            self.send_error_text(error, query_id)
        except (BrokenPipeError, ConnectionResetError):
            outcome = "client went away"
            self.close_connection = True
        finally:
            if not body.consumed:
                # Answered before the whole body was read: the connection is out of step.
                self.close_connection = True
            log.info(
                "query_id=%s user=%s %s in %.1f ms",
                query_id, self.headers.get("X-ClickHouse-User", "-"), outcome,
                (time.monotonic() - started) * 1000,
            )

    def authenticate(self, params):
        user = self.headers.get("X-ClickHouse-User")
        key = self.headers.get("X-ClickHouse-Key")
        authorization = self.headers.get("Authorization", "")
        if user is None and authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:].strip()).decode()
                user, _, key = decoded.partition(":")
            except ValueError:
                user, key = "", ""
        if user is None:
            user = params.get("user", "default")
        if key is None:
            key = params.get("password", "")
        expected_user, expected_key = self.server.credentials
        user_ok = hmac.compare_digest(user.encode(), expected_user.encode())
        key_ok = hmac.compare_digest(key.encode(), expected_key.encode())
        if not (user_ok and key_ok):
            raise self.engine.error(
                "AUTHENTICATION_FAILED",
                f"{user}: Authentication failed: password is incorrect, or there is no user "
                "with such name",
            )

    def run(self, params, body, readonly, query_id) -> str:
        self.authenticate(params)
        query = params.get("query", "")
        query_params = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        content_type = self.headers.get("Content-Type", "")
        insert = None
        if content_type.startswith("multipart/form-data"):
            fields = parse_multipart(body.read_all(self.server.max_query_size), content_type)
            query = " ".join(part for part in (query, fields.get("query", "")) if part)
            query_params.update({k[6:]: v for k, v in fields.items() if k.startswith("param_")})
        elif not readonly and query and (insert := INSERT_WITH_FORMAT.match(query)):
            pass  # the body is the insert's data
        else:
            if params.get("decompress") == "1":
                raw = b"".join(self.decompressed(body))
            else:
                raw = body.read_all(self.server.max_query_size)
            text = raw.decode("utf-8", errors="replace")
            query = "\n".join(part for part in (query, text) if part)
        if not query.strip():
            raise self.engine.error("SYNTAX_ERROR", "Empty query")

        settings = {
            k: v for k, v in params.items() if k not in HANDLER_PARAMS and not k.startswith("param_")
        }
        if readonly:
            settings["readonly"] = "2"
        with self.engine.session(params.get("database"), settings) as session:
            if insert:
                return self.run_insert(session, insert, params, body, query_id)
            return self.run_query(session, query, params, query_params, query_id)

    def run_insert(self, session, insert, params, body, query_id) -> str:
        statement, input_format = insert.group(1), insert.group(2)
        if params.get("decompress") == "1":
            chunks = self.decompressed(body)
        else:
            chunks = body.chunks()
        started = time.monotonic_ns()
        rows, written = session.insert(statement, input_format, chunks)
        summary = self.summary(written_rows=rows, written_bytes=written,
                               elapsed_ns=time.monotonic_ns() - started)
        self.send_response(200)
        self.common_headers(query_id)
        self.send_header("X-ClickHouse-Summary", summary)
        self.send_header("Content-Length", "0")
        self.end_headers()
        return f"inserted {rows} rows"

    def decompressed(self, body):
        try:
            yield from framing.decode_blocks(body.read_exact)
        except framing.FramingError as exc:
            raise self.engine.error("CANNOT_DECOMPRESS", str(exc)) from None

    def run_query(self, session, query, params, query_params, query_id) -> str:
        output_format = params.get("default_format", "TabSeparated")
        kind, result = session.execute(query, output_format, query_params)
        compress = params.get("compress") == "1"
        self.send_response(200)
        self.common_headers(query_id)
        self.send_header("X-ClickHouse-Format", output_format)
        self.send_header("Content-Type", CONTENT_TYPES.get(output_format, "text/plain; charset=UTF-8"))
        self.send_header("X-ClickHouse-Summary", self.summary())
        if kind == "whole":
            data = framing.encode_block(result) if compress and result else result
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return f"{len(result)} bytes"
        tag = "".join(secrets.choice(string.ascii_lowercase) for _ in range(16))
        self.send_header("X-ClickHouse-Exception-Tag", tag)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0
        try:
            for chunk in result:
                self.write_chunk(framing.encode_block(chunk) if compress else chunk)
                sent += len(chunk)
        except EngineError as error:
            self.write_chunk(exception_block(tag, error.message))
            self.close_connection = True
            self.wfile.write(b"0\r\n\r\n")
            return f"error {error.code} after {sent} bytes"
        except BaseException:
            result.cancel()
            raise
        self.wfile.write(b"0\r\n\r\n")
        return f"{sent} bytes streamed"

    def write_chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def common_headers(self, query_id):
        self.send_header("X-ClickHouse-Query-Id", query_id)
        self.send_header("X-ClickHouse-Timezone", self.engine.timezone)
        self.send_header("X-ClickHouse-Server-Display-Name", "flowhouse-chbridge")
        self.send_header("Keep-Alive", f"timeout={self.timeout}")

    @staticmethod
    def summary(written_rows=0, written_bytes=0, elapsed_ns=0) -> str:
        fields = {
            "read_rows": 0, "read_bytes": 0, "written_rows": written_rows,
            "written_bytes": written_bytes, "total_rows_to_read": 0, "result_rows": 0,
            "result_bytes": 0, "elapsed_ns": elapsed_ns,
        }
        return json.dumps({k: str(v) for k, v in fields.items()}, separators=(",", ":"))

    def send_plain(self, status: int, data: bytes):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error_text(self, error: EngineError, query_id: str):
        data = (error.message + f" (version {self.engine.version})\n").encode()
        self.send_response(self.engine.http_status(error))
        self.send_header("X-ClickHouse-Exception-Code", str(error.code))
        self.common_headers(query_id)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self):
        self.send_plain(200, b"Ok.\n")


class BridgeServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for in-flight requests: graceful shutdown
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address, engine, credentials, max_concurrent_queries, max_query_size):
        super().__init__(address, Handler)
        self.engine = engine
        self.credentials = credentials
        self.slots = threading.BoundedSemaphore(max_concurrent_queries)
        self.max_query_size = max_query_size
