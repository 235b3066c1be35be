"""The ClickHouse engine (chdb) as the HTTP layer needs it: sessions, streamed results, inserts,
and errors carrying ClickHouse's own codes.

Facts about chdb 26.9 this module is built on (each checked on this machine):
- One process hosts one engine bound to one data directory; any number of connections to it can
  coexist and run queries in parallel. The engine stops when the last connection closes, so an
  anchor connection lives as long as the bridge.
- A streamed result (`send_query`) yields one format output per block: formats with a prefix or
  suffix (`...WithNames`, JSON, Pretty, Parquet) repeat it in every chunk. Only formats whose
  per-block outputs concatenate into the whole are streamed; the RowBinary header variants are
  streamed with the repeated header cut off; everything else is answered whole.
- Only SELECT-like statements stream; DDL and `INSERT ... VALUES` are refused with code 36 and run
  through the non-streaming path instead.
"""

import re
import threading

import chdb

# Formats whose per-block outputs concatenate into exactly the whole output.
STREAMABLE_FORMATS = {
    "RowBinary", "TabSeparated", "TSV", "TabSeparatedRaw", "TSVRaw", "CSV", "JSONEachRow",
    "JSONLines", "NDJSON", "JSONCompactEachRow", "JSONStringsEachRow", "Native",
}
# RowBinary with a header (column names, and types) repeated at the start of every block.
HEADERED_ROWBINARY = {"RowBinaryWithNamesAndTypes": 2, "RowBinaryWithNames": 1}

FORMAT_CLAUSE = re.compile(r"\bFORMAT\s+([A-Za-z][A-Za-z0-9_]*)", re.IGNORECASE)
NOT_STREAMABLE = "Streaming query is not supported"

# ClickHouse's exceptionCodeToHTTPStatus (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp),
# keyed by error name; the numeric codes are read from the engine at start-up.
STATUS_BY_ERROR_NAME = {
    403: ["UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE",
          "ACCESS_DENIED"],
    401: ["REQUIRED_PASSWORD"],
    400: ["BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT",
          "CANNOT_PARSE_ESCAPE_SEQUENCE", "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE",
          "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER", "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
          "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6", "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
          "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN", "UNKNOWN_ELEMENT_IN_AST",
          "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST", "TOO_BIG_AST",
          "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
          "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"],
    404: ["UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE",
          "UNKNOWN_STORAGE", "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING",
          "UNKNOWN_AGGREGATE_FUNCTION", "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE",
          "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE"],
    413: ["QUERY_IS_TOO_LARGE"],
    501: ["NOT_IMPLEMENTED"],
    503: ["SOCKET_TIMEOUT", "CANNOT_OPEN_FILE", "CANNOT_SCHEDULE_TASK"],
    411: ["HTTP_LENGTH_REQUIRED"],
    408: ["TIMEOUT_EXCEEDED"],
    415: ["UNSUPPORTED_MEDIA_TYPE"],
}

CODE_PATTERN = re.compile(r"Code: (\d+)\. ")


class EngineError(Exception):
    """An error in ClickHouse's shape: a numeric code and a `Code: N. DB::Exception: ...` text."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def of(cls, code: int, name: str, text: str) -> "EngineError":
        return cls(code, f"Code: {code}. DB::Exception: {text}. ({name})")

    @classmethod
    def from_engine(cls, exc: BaseException) -> "EngineError":
        text = str(exc)
        match = CODE_PATTERN.search(text)
        if not match:
            return cls.of(1001, "STD_EXCEPTION", text)
        # chdb's Python layer prefixes its own words ("Streaming query failed: ..."): cut to
        # where ClickHouse's message starts, as a real server would send it.
        return cls(int(match.group(1)), text[match.start():].strip())


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def effective_format(sql: str, default_format: str) -> str:
    """The output format: the query's own FORMAT clause wins over `default_format`.

    A false match (a column named `format`) only costs streaming, never correctness: unknown
    formats are answered whole.
    """
    matches = FORMAT_CLAUSE.findall(sql)
    return matches[-1] if matches else default_format


def rowbinary_header_length(data: bytes, sections: int) -> int | None:
    """Length of a RowBinaryWithNames[AndTypes] header at the start of `data`, or None if short."""

    def varint(pos):
        shift = value = 0
        while True:
            if pos >= len(data):
                return None, pos
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, pos
            shift += 7

    columns, pos = varint(0)
    if columns is None:
        return None
    for _ in range(columns * sections):
        length, pos = varint(pos)
        if length is None or pos + length > len(data):
            return None
        pos += length
    return pos


class Engine:
    def __init__(self, data_dir: str):
        self.path = f"file:{data_dir}"
        self._anchor = chdb.connect(self.path)
        self.version = self._scalar("SELECT version()")
        self.timezone = self._scalar("SELECT timezone()")
        self.setting_names = frozenset(
            self._anchor.query("SELECT name FROM system.settings", "TSVRaw").bytes().decode().split()
        )
        names = self._anchor.query(
            "SELECT number, errorCodeToName(number) FROM numbers(2000) "
            "WHERE errorCodeToName(number) != ''",
            "TSVRaw",
        ).bytes().decode()
        self.code_by_name = {}
        for line in names.splitlines():
            code, name = line.split("\t")
            self.code_by_name[name] = int(code)
        self.status_by_code = {
            self.code_by_name[name]: status
            for status, error_names in STATUS_BY_ERROR_NAME.items()
            for name in error_names
            if name in self.code_by_name
        }
        self._closed = threading.Event()

    def _scalar(self, sql: str) -> str:
        return self._anchor.query(sql, "TSVRaw").bytes().decode().strip()

    def error(self, name: str, text: str) -> EngineError:
        return EngineError.of(self.code_by_name.get(name, 1001), name, text)

    def http_status(self, error: EngineError) -> int:
        return self.status_by_code.get(error.code, 500)

    def session(self, database: str | None, settings: dict[str, str]) -> "Session":
        """A fresh connection with the request's database and settings.

        Connections are cheap (~2.5 ms) and give every request isolated session state, like a
        stateless HTTP query on a real server.
        """
        for name in settings:
            if name not in self.setting_names and not name.startswith("custom_"):
                raise self.error(
                    "UNKNOWN_SETTING",
                    f"Setting {name} is neither a builtin setting nor started with the prefix "
                    "'custom_' registered for user-defined settings",
                )
        conn = chdb.connect(self.path)
        try:
            if database:
                conn.query(f"USE {quote_identifier(database)}")
            for name, value in settings.items():
                conn.query(f"SET {name} = {quote_string(value)}")
        except Exception as exc:
            conn.close()
            raise EngineError.from_engine(exc) from None
        return Session(conn)

    def close(self):
        self._anchor.close()


class Session:
    def __init__(self, conn):
        self._conn = conn

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._conn.close()
        return False

    def execute(self, sql: str, output_format: str, params: dict[str, str]):
        """Runs `sql`; returns ('stream', iterator of chunks) or ('whole', bytes).

        A streamed result has produced its first chunk already, so an error that happens before
        any data (unknown table, bad parameter) still reaches the client as an HTTP status.
        """
        fmt = effective_format(sql, output_format)
        if fmt in STREAMABLE_FORMATS or fmt in HEADERED_ROWBINARY:
            try:
                raw = self._conn._conn.send_query(sql, output_format, params=params)
            except Exception as exc:
                error = EngineError.from_engine(exc)
                if NOT_STREAMABLE not in error.message:
                    raise error from None
            else:
                stream = ResultStream(self._conn._conn, raw, HEADERED_ROWBINARY.get(fmt, 0))
                stream.prefetch()
                return "stream", stream
        try:
            return "whole", self._conn.query(sql, output_format, params=params).bytes()
        except Exception as exc:
            raise EngineError.from_engine(exc) from None

    def insert(self, statement: str, input_format: str, chunks):
        """Streams `chunks` (an iterable of bytes) into `statement`; returns (rows, bytes)."""
        try:
            inserter = self._conn.send_insert(statement, input_format)
        except Exception as exc:
            raise EngineError.from_engine(exc) from None
        try:
            for chunk in chunks:
                if chunk:
                    inserter.append(chunk)
            result = inserter.finish()
        except EngineError:
            inserter.cancel()
            raise
        except Exception as exc:
            inserter.cancel()
            raise EngineError.from_engine(exc) from None
        return result.rows_written, result.bytes_written


class ResultStream:
    """Iterates over a streamed result's chunks, cutting repeated RowBinary headers.

    Uses chdb's raw streaming calls: the Python wrapper treats a chunk that read no rows as the end
    and would drop the header of an empty RowBinaryWithNamesAndTypes result.
    """

    def __init__(self, raw_conn, raw_result, header_sections: int):
        self._conn = raw_conn
        self._result = raw_result
        self._header_sections = header_sections
        self._header = None
        self._first = None
        self._done = False

    def _fetch(self):
        try:
            result = self._conn.streaming_fetch_result(self._result)
        except Exception as exc:
            self._done = True
            raise EngineError.from_engine(exc) from None
        data = result.bytes() if result is not None else b""
        if not data:
            self._done = True
            return None
        if self._header_sections:
            if self._header is None:
                length = rowbinary_header_length(data, self._header_sections)
                self._header = data[:length] if length is not None else b""
            elif self._header and data.startswith(self._header):
                data = data[len(self._header):]
        return data

    def prefetch(self):
        self._first = self._fetch()

    def __iter__(self):
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        while not self._done:
            data = self._fetch()
            if data:
                yield data

    def cancel(self):
        if not self._done:
            self._done = True
            try:
                self._conn.streaming_cancel_query(self._result)
            except Exception:
                pass  # the stream may have ended on its own meanwhile
