"""Chorus on a remote node: ``chorus.connect(url)``.

``chorus.connect("http://HOST:7800")`` returns a :class:`RemoteStore`, which
talks to a ``chorus serve`` node over its HTTP API with the standard library
only; ``chorus.connect("tcp://HOST:7801")`` returns a :class:`ZmqStore`,
which talks to the node's ZeroMQ broker (``serve --zmq``) and needs pyzmq
(``pip install chorus-store[zmq]``).

Both have the embedded :class:`chorus.Store`'s methods, with the same
arguments, results (:class:`chorus.Read`, :class:`chorus.Item`,
:class:`chorus.Change`, ...) and exceptions, wherever the node offers the
operation; what it cannot offer raises :class:`chorus.InvalidInput` saying
what to use instead:

- ``transaction()`` and ``snapshot()``: the node commits each write alone
  and keeps no snapshot for a client (use ``chorus.open`` on the node's
  machine, or contexts: ``read()`` then ``put(..., context=...)``);
- ``iter(tombstones=True)``: the node lists live keys only;
- ``oplogs.register``: a Python reducer cannot run inside the node (set a
  script with ``chorus reducer set TYPE FILE``);
- over ZeroMQ, ``watch``: the broker publishes events without positions to
  resume from (use the HTTP handle, which reads ``/v1/watch``);
- keys that are not UTF-8: both wire protocols name keys as text (values
  may be any bytes).

Differences that remain:

- ``put(fp, key, function)`` reads the siblings, calls the function and
  writes with the read's context: optimistic, not under the writer lock as
  embedded. A write that lands between the read and the write stays a
  sibling rather than being lost or overwritten.
- ``iter``, ``items`` and ``keys`` read a page at a time (in key order,
  a full prefix after another): keys written meanwhile may or may not be
  seen, and a page whose answer would be too big is asked again with fewer
  items, so memory stays bounded whatever the data.
- ``watch`` reconnects by itself from the last change it reported when the
  stream breaks. When compaction outran it, it reconnects from the node's
  present position and yields a :class:`chorus.Gap` whose ``resume`` is the
  last change it had reported (the node does not say where the stream
  resumed; watching again from it yields the same gap).

Errors: every answer of the node that is an error becomes the exception
``chorus.error_for(code, message)`` makes, the class the embedded engine
raises for the same kind (a ``get`` of an absent key is no error: it
returns ``default``). A node that cannot be reached, or that does not
answer within ``timeout`` seconds, raises :class:`chorus.Busy` (retry
later) whose message names the URL and says to check that ``chorus serve``
runs there; a write that timed out may or may not have been applied, as
the message says.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import math
import os
import queue
import select
import socket
import threading
import time
import urllib.parse
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from chorus._chorus import Busy, check_names, error_for, split_full_prefix
from chorus._types import Change, Gap, Item, Read, Sibling

__all__ = [
    "RemoteDocs",
    "RemoteOplogs",
    "RemoteStore",
    "RemoteWatch",
    "ZmqStore",
    "connect",
]

#: The context of an absent key, which every handle returns for it.
EMPTY_CONTEXT = "AQA"
#: Items asked per page when listing keys, prefixes or documents.
PAGE_LIMIT = 256
#: A page whose answer is announced bigger than this is asked again with
#: half the items (down to one).
PAGE_BYTES = 32 << 20
#: No answer bigger than this is read into memory.
MAX_ANSWER = 256 << 20
#: The node's limit on a request body (HTTP and broker alike).
NODE_BODY_MAX = 1 << 20
#: Bodies up to this are sent for the node to refuse with its own message;
#: bigger ones are refused here (the HTTP node drains up to 64 MiB).
HTTP_SEND_MAX = 64 << 20
#: The broker drops the connection of a message over 4 MiB: refused here.
ZMQ_SEND_MAX = (4 << 20) - 4096
#: Longest line of the watch stream (an event with every sibling of a key).
MAX_EVENT_LINE = 32 << 20
#: Events read ahead of the caller by a watch.
WATCH_QUEUE = 16
#: A watch stream silent this long is dead (the node sends a comment
#: every 15 s): it reconnects.
WATCH_SILENCE = 45.0
#: Attempts to reconnect a broken watch stream before giving up.
WATCH_RECONNECTS = 8
#: A kept-alive HTTP connection idle this long is not reused (the node
#: closes idle connections after 120 s).
IDLE_REUSE = 60.0

Resolver = Union[None, str, Callable[[List[bytes]], Optional[bytes]]]
FullPrefix = Tuple[str, str]


# ---------------------------------------------------------------------------
# Arguments: the embedded handle's checks, with its exception classes.


def _still_open(conn: http.client.HTTPConnection) -> bool:
    """False when the node closed this idle kept-alive connection (its
    socket reads as ready: end of file), so that a write is never sent on
    a connection that is already gone."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        ready, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not ready


def _key_of(entry: Dict[str, Any]) -> bytes:
    """A listed key's bytes: text, or base64 with ``key_encoding``."""
    if entry.get("key_encoding") == "base64":
        return base64.b64decode(str(entry["key"]))
    return str(entry["key"]).encode("utf-8")


def _invalid(message: str) -> Exception:
    return error_for("bad_request", message)


def _type_name(obj: Any) -> str:
    return type(obj).__name__


def _typed(obj: Any, types: Tuple[type, ...], name: str, what: str) -> None:
    """``InvalidInput`` naming the option, as the native module raises, for
    a keyword option of the wrong type (``match``, ``context``,
    ``allow_put``, ...): a truthy str is not a flag."""
    if bool in types and not isinstance(obj, bool):
        raise _invalid(f"{name}= must be True or False, not {_type_name(obj)}")
    if not isinstance(obj, types):
        raise _invalid(f"{name}= must be a {what}, not {_type_name(obj)}")


def _opt_str(obj: Any, name: str) -> Optional[str]:
    if obj is not None:
        _typed(obj, (str,), name, "str")
    return obj


def _bytes_arg(obj: Any, what: str) -> bytes:
    """The embedded handle's rule: bytes, bytearray, memoryview, or str as
    UTF-8."""
    if isinstance(obj, bytes):
        return bytes(obj)
    if isinstance(obj, str):
        try:
            return obj.encode("utf-8")
        except UnicodeEncodeError as e:
            raise _invalid(f"the {what} is a str that UTF-8 cannot encode ({e}): pass bytes, or text without lone surrogates") from None
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    raise _invalid(f"the {what} must be bytes or str, not {_type_name(obj)}")


def _str_arg(obj: Any, what: str) -> str:
    if isinstance(obj, str):
        return obj
    raise _invalid(f"the {what} must be a str, not {_type_name(obj)}")


def _check_name(what: str, name: str) -> None:
    """The engine's rule for a prefix or subprefix (checked natively)."""
    if what == "prefix":
        check_names(name, "x")
    else:
        check_names("x", name)


def _full_prefix(obj: Any) -> FullPrefix:
    return split_full_prefix(obj)


def _scope(obj: Any) -> Tuple[str, ...]:
    """``()`` for everything, ``(prefix,)`` or ``(prefix, subprefix)``."""
    if obj is None:
        return ()
    text = _str_arg(obj, "scope")
    if "/" in text:
        return _full_prefix(text)
    _check_name("prefix", text)
    return (text,)


def _resolver(obj: Any) -> Resolver:
    if obj is None:
        return None
    if isinstance(obj, str):
        if obj == "lww":
            return "lww"
        raise _invalid(f"resolver={obj!r} is not a resolver: use \"lww\", a function of the values, or None")
    if callable(obj):
        return obj
    raise _invalid(f"resolver must be None, \"lww\" or a function, not {_type_name(obj)}")


def _context_arg(text: Optional[str]) -> Optional[str]:
    """A context as a read returned it: base64url text. Anything else is
    refused here (the node would refuse it too, with the same class)."""
    if text is None:
        return None
    _typed(text, (str,), "context", "str")
    if not text or any(not (c.isascii() and (c.isalnum() or c in "-_")) for c in text):
        raise _invalid(
            f"the context {text!r} is not one a read returned: pass the `context` of a read, or none"
        )
    return text


def _key_text(key: bytes) -> str:
    """A key as the wire names it: UTF-8 text."""
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid(
            f"the key {key!r} is not UTF-8: the HTTP API and the ZeroMQ broker name keys as text "
            "(values may be any bytes); use a text key, or the embedded handle chorus.open(path) "
            "on the node's machine"
        ) from None


def _lossy(key: bytes) -> str:
    return key.decode("utf-8", "replace")


def _json_arg(obj: Any, what: str, depth: int = 0) -> Any:
    """``obj`` as JSON, with the embedded handle's rules and messages."""
    if depth > 64:
        raise _invalid(f"the {what} nests deeper than 64 levels")
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        if not -(1 << 63) <= obj < (1 << 64):
            raise _invalid(f"the {what} holds an integer outside the 64-bit range")
        return int(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise _invalid(f"the {what} holds {obj}, which JSON cannot represent")
        return obj
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise _invalid(f"the {what} has a key of type {_type_name(k)}: JSON object keys are str")
            out[k] = _json_arg(v, what, depth + 1)
        return out
    if isinstance(obj, (list, tuple)):
        return [_json_arg(x, what, depth + 1) for x in obj]
    raise _invalid(
        f"the {what} holds a {_type_name(obj)}, which is not JSON (dict, list, str, int, float, bool, None)"
    )


def _doc_arg(obj: Any) -> Dict[str, Any]:
    if not isinstance(obj, dict):
        raise _invalid(f"a document must be a dict, not {_type_name(obj)}")
    return _json_arg(obj, "document")


def _store_name(obj: Any) -> str:
    name = _str_arg(obj, "document store name")
    parts = name.split("/")
    if len(parts) > 2:
        raise _invalid(
            f"the store name {name!r} has {len(parts)} parts: use NAME (kept under docs/NAME) or PREFIX/NAME"
        )
    for what, part in zip(("prefix", "subprefix") if len(parts) == 2 else ("subprefix",), parts):
        try:
            _check_name(what, part)
        except Exception as e:
            raise _invalid(f"the store name {name!r}: {e}") from None
    return name


def _call_values(f: Callable, values: List[bytes]) -> Optional[bytes]:
    out = f(list(values))
    if out is None:
        return None
    return _bytes_arg(out, "function's result")


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?\\" else c for c in text)


def _with_context(e: Exception, context: Optional[str]) -> Exception:
    if context is not None:
        try:
            e.context = context  # type: ignore[attr-defined]
        except AttributeError:
            pass
    return e


def _error_from(body: Any, fallback: str) -> Exception:
    """The exception of an error answer ``{"code", "message"[, "context"]}``;
    a ``not_served`` one also carries ``channel`` and ``nodes`` (each a
    dict with the node's ``id`` and addresses)."""
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        e = error_for(body["code"], str(body.get("message", "")))
        for name in ("channel", "nodes"):
            if name in body:
                try:
                    setattr(e, name, body[name])
                except AttributeError:
                    pass
        return _with_context(e, body.get("context"))
    return error_for("internal", fallback)


# ---------------------------------------------------------------------------
# Transports: one request, one JSON answer, in the broker's vocabulary.


class _HttpTransport:
    """Requests over the node's HTTP API, a kept-alive connection per thread."""

    def __init__(self, url: str, token: Optional[str], timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _invalid(f"{url!r} is not an HTTP URL: write http://HOST:PORT")
        if parts.query or parts.fragment:
            raise _invalid(f"{url!r} has a query or fragment: write http://HOST:PORT[/PATH]")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        try:
            self._port = parts.port or (443 if self._https else 80)
        except ValueError:
            raise _invalid(f"{url!r} has a port that is not a number from 1 to 65535") from None
        self._base = parts.path.rstrip("/")
        self._timeout = timeout
        self._headers = {"Accept": "application/json"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._local = threading.local()
        self._all: "weakref.WeakSet[http.client.HTTPConnection]" = weakref.WeakSet()
        self._lock = threading.Lock()

    # Connections.

    def new_connection(self, pooled: bool = True) -> http.client.HTTPConnection:
        """A new connection; ``pooled`` ones are closed by :meth:`close`
        (a watch's is not: a watch outlives its handle's ``close()``)."""
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self._timeout)
        if pooled:
            with self._lock:
                self._all.add(conn)
        return conn

    def _connection(self) -> Tuple[http.client.HTTPConnection, bool]:
        """This thread's connection and whether it served a request before."""
        held = getattr(self._local, "held", None)
        if held is not None:
            conn, pid, last = held
            if pid == os.getpid() and time.monotonic() - last < IDLE_REUSE and _still_open(conn):
                return conn, True
            if pid == os.getpid():
                conn.close()
            self._local.held = None
        return self.new_connection(), False

    def _keep(self, conn: http.client.HTTPConnection) -> None:
        self._local.held = (conn, os.getpid(), time.monotonic())

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        self._local.held = None

    def close(self) -> None:
        with self._lock:
            conns = list(self._all)
        for conn in conns:
            conn.close()

    def headers(self) -> Dict[str, str]:
        return dict(self._headers)

    def path(self, *parts: str, query: Optional[Dict[str, Any]] = None) -> str:
        path = self._base + "".join("/" + urllib.parse.quote(p, safe="") for p in parts)
        if query:
            pairs = {k: ("true" if v is True else "false" if v is False else v) for k, v in query.items() if v is not None}
            if pairs:
                path += "?" + urllib.parse.urlencode(pairs)
        return path

    def unreachable(self, reason: Any, wrote: bool) -> Exception:
        maybe = " (the request may have been applied: read before writing again)" if wrote else ""
        return error_for(
            "busy",
            f"cannot reach the Chorus node at {self.url}: {reason}; is `chorus serve` running there "
            f"with --http on that address? Retry once it is{maybe}",
        )

    def exchange(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
        cap: int = MAX_ANSWER,
    ) -> Tuple[int, Optional[bytes]]:
        """Sends one request; its status and body (``None`` when the body
        is announced bigger than ``cap``)."""
        sent = self.headers()
        sent.update(headers or {})
        if body is not None and len(body) > HTTP_SEND_MAX:
            raise error_for(
                "too_large",
                f"the request body is {len(body)} bytes; the node takes at most {NODE_BODY_MAX}: nothing was sent",
            )
        writes = method != "GET"
        for attempt in (0, 1):
            conn, reused = self._connection()
            try:
                delivered = False
                conn.request(method, path, body=body, headers=sent)
                delivered = True
                resp = conn.getresponse()
                length = resp.getheader("Content-Length")
                if length is not None and length.isdigit() and int(length) > cap:
                    self._drop(conn)
                    return resp.status, None
                data = resp.read(cap + 1)
                if len(data) > cap:
                    self._drop(conn)
                    return resp.status, None
                if resp.will_close:
                    self._drop(conn)
                else:
                    self._keep(conn)
                return resp.status, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as e:
                self._drop(conn)
                # A kept-alive connection the node had closed: sent again
                # once when the request could not be sent, or when it is a
                # read. A write that was sent may have been applied
                # before the connection dropped (a POST applied twice
                # would push an operation twice), so it is not resent.
                if reused and attempt == 0 and (not delivered or method == "GET"):
                    continue
                raise self.unreachable(e, writes) from None
            except socket.timeout:
                self._drop(conn)
                maybe = " (the request may have been applied: read before writing again)" if writes else ""
                raise error_for(
                    "busy",
                    f"the Chorus node at {self.url} did not answer within {self._timeout} s: retry later, "
                    f"or connect with a longer timeout{maybe}",
                ) from None
            except (OSError, http.client.HTTPException) as e:
                self._drop(conn)
                raise self.unreachable(e, writes) from None
        raise self.unreachable("the connection closed twice", writes)

    def json_request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
        cap: int = MAX_ANSWER,
    ) -> Any:
        """One request whose answer is JSON; errors raised as the chorus
        exception of their code; ``_TooBig`` for an answer over ``cap``."""
        status, data = self.exchange(method, path, body, headers, cap)
        if data is None:
            if status >= 400:
                raise error_for("internal", f"{method} {path}: the node answered {status} with a body over {cap} bytes")
            raise _TooBig()
        try:
            answer = json.loads(data) if data else None
        except ValueError:
            answer = None
            if status < 400:
                raise error_for(
                    "internal",
                    f"{method} {self.url}{path} answered {status} with a body that is not JSON: "
                    "is this URL a Chorus node?",
                ) from None
        if status >= 400:
            raise _error_from(answer, f"{method} {self.url}{path} failed with HTTP {status} (not a Chorus error body)")
        return answer

    # The operations, named as the broker names them.

    def call(self, op: str, fields: Dict[str, Any], cap: int = MAX_ANSWER) -> Dict[str, Any]:
        return getattr(self, "_op_" + op.replace(".", "_"))(cap=cap, **fields)

    def _op_ping(self, cap: int) -> Dict[str, Any]:
        return self.json_request("GET", self.path("health"), cap=cap)

    def _op_get(self, cap: int, prefix: str, sub: str, key: str, resolve: Optional[str] = None, allow_put: bool = False) -> Dict[str, Any]:
        query = {"resolve": resolve, "allow_put": allow_put if resolve else None}
        return self.json_request("GET", self.path("v1", "kv", prefix, sub, key, query=query), cap=cap)

    def _write(self, method: str, prefix: str, sub: str, key: str, body: Optional[bytes], context: Optional[str], if_absent: bool) -> Dict[str, Any]:
        headers = {}
        if context is not None:
            headers["X-Chorus-Context"] = context
        if if_absent:
            headers["If-None-Match"] = "*"
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        return self.json_request(method, self.path("v1", "kv", prefix, sub, key), body=body, headers=headers)

    def _op_put(self, cap: int, prefix: str, sub: str, key: str, value: bytes, context: Optional[str] = None, if_absent: bool = False) -> Dict[str, Any]:
        return self._write("PUT", prefix, sub, key, value, context, if_absent)

    def _op_delete(self, cap: int, prefix: str, sub: str, key: str, context: Optional[str] = None, if_absent: bool = False) -> Dict[str, Any]:
        return self._write("DELETE", prefix, sub, key, None, context, if_absent)

    def _op_list(self, cap: int, prefix: str, sub: str, limit: int, after: Optional[str] = None, match: Optional[str] = None) -> Dict[str, Any]:
        query = {"match": match, "limit": limit, "after": after}
        return self.json_request("GET", self.path("v1", "kv", prefix, sub, query=query), cap=cap)

    def _op_prefixes(self, cap: int, limit: int, after: Optional[str] = None) -> Dict[str, Any]:
        return self.json_request("GET", self.path("v1", "kv", query={"limit": limit, "after": after}), cap=cap)

    def _op_subprefixes(self, cap: int, prefix: str, limit: int, after: Optional[str] = None) -> Dict[str, Any]:
        query = {"limit": limit, "after": after}
        return self.json_request("GET", self.path("v1", "kv", prefix, query=query), cap=cap)

    def _op_hash(self, cap: int, prefix: str, sub: Optional[str] = None) -> Dict[str, Any]:
        parts = ("v1", "hash", prefix) + ((sub,) if sub is not None else ())
        return self.json_request("GET", self.path(*parts), cap=cap)

    def _json_body(self, obj: Any) -> Tuple[bytes, Dict[str, str]]:
        return json.dumps(obj, allow_nan=False, ensure_ascii=False).encode("utf-8"), {"Content-Type": "application/json"}

    def _op_doc_create(self, cap: int, store: str, doc: Dict[str, Any]) -> Dict[str, Any]:
        body, headers = self._json_body(doc)
        return self.json_request("POST", self.path("v1", "docs", store), body=body, headers=headers)

    def _op_doc_get(self, cap: int, store: str, doc_id: str, rev: Optional[str] = None, conflicts: bool = False) -> Dict[str, Any]:
        query = {"rev": rev, "conflicts": True if conflicts else None}
        return {"doc": self.json_request("GET", self.path("v1", "docs", store, doc_id, query=query), cap=cap)}

    def _op_doc_update(self, cap: int, store: str, doc: Dict[str, Any], keep_both: bool = False) -> Dict[str, Any]:
        body, headers = self._json_body(doc)
        query = {"keep_both": True if keep_both else None}
        return self.json_request("PUT", self.path("v1", "docs", store, doc["_id"], query=query), body=body, headers=headers)

    def _op_doc_delete(self, cap: int, store: str, doc_id: str, rev: str) -> Dict[str, Any]:
        return self.json_request("DELETE", self.path("v1", "docs", store, doc_id, query={"rev": rev}))

    def _op_doc_resolve(self, cap: int, store: str, doc_id: str, rev: str) -> Dict[str, Any]:
        return self.json_request("POST", self.path("v1", "docs", store, doc_id, "resolve", query={"rev": rev}))

    def _op_doc_all(self, cap: int, store: str, limit: int, after: Optional[str] = None) -> Dict[str, Any]:
        return self.json_request("GET", self.path("v1", "docs", store, query={"limit": limit, "after": after}), cap=cap)

    def _op_op_push(self, cap: int, prefix: str, sub: str, path: str, type: str, payload: Any) -> Dict[str, Any]:
        body, headers = self._json_body({"type": type, "payload": payload})
        return self.json_request("POST", self.path("v1", "ops", prefix, sub, path), body=body, headers=headers, cap=cap)

    def _op_op_get(self, cap: int, prefix: str, sub: str, path: str) -> Dict[str, Any]:
        return self.json_request("GET", self.path("v1", "ops", prefix, sub, path), cap=cap)

    def _op_op_log(self, cap: int, prefix: str, sub: str, path: str) -> Dict[str, Any]:
        return self.json_request("GET", self.path("v1", "ops", prefix, sub, path, query={"log": True}), cap=cap)


class _TooBig(Exception):
    """An answer over the size asked for: ask again with a smaller page."""


def _zmq_value(value: bytes) -> Dict[str, str]:
    """A value for the broker: ``value`` (text) when it is UTF-8 and no
    longer so in JSON than in base64, else ``value_base64``."""
    b64 = base64.b64encode(value).decode("ascii")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return {"value_base64": b64}
    if len(json.dumps(text, ensure_ascii=False).encode("utf-8")) <= len(b64) + 2:
        return {"value": text}
    return {"value_base64": b64}


class _ZmqTransport:
    #: Items asked per page: a broker reply is one ZeroMQ message, which
    #: libzmq drops (and the call times out) when it is over MAXMSGSIZE,
    #: so pages are kept well under it even with large values.
    page_limit = 32

    """Requests to the node's broker, a DEALER socket per thread."""

    def __init__(self, url: str, token: Optional[str], timeout: float) -> None:
        try:
            import zmq
        except ImportError:
            raise _invalid(
                f"chorus.connect({url!r}) talks to the ZeroMQ broker with pyzmq, which is not installed: "
                "pip install chorus-store[zmq] (or pip install pyzmq), or connect to the node's HTTP API: "
                "chorus.connect('http://HOST:7800')"
            ) from None
        self._zmq = zmq
        self.url = url
        self._token = token
        self._timeout = timeout
        self._ids = itertools.count(1)
        self._local = threading.local()
        self._lock = threading.Lock()
        # Every socket this handle made, to close them at close(). They
        # live in pyzmq's process-wide context, which is never terminated
        # here (terminating a context waits for every socket of it).
        self._sockets: "weakref.WeakSet[Any]" = weakref.WeakSet()

    def _socket(self) -> Any:
        held = getattr(self._local, "held", None)
        if held is not None and held[1] == os.getpid() and not held[0].closed:
            return held[0]
        zmq = self._zmq
        sock = zmq.Context.instance().socket(zmq.DEALER)
        with self._lock:
            self._sockets.add(sock)
        sock.setsockopt(zmq.LINGER, 0)
        # Only to a connected node: a request is never queued for a node
        # that is down, to be applied when it comes back.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_ANSWER)
        try:
            sock.connect(self.url)
        except zmq.ZMQError as e:
            sock.close()
            raise _invalid(f"{self.url!r} is not a ZeroMQ endpoint ({e}): write tcp://HOST:PORT or ipc://PATH") from None
        self._local.held = (sock, os.getpid())
        return sock

    def _drop(self) -> None:
        held = getattr(self._local, "held", None)
        if held is not None:
            if held[1] == os.getpid():
                held[0].close(linger=0)
            self._local.held = None

    def close(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            if not sock.closed:
                sock.close(linger=0)

    def call(self, op: str, fields: Dict[str, Any], cap: int = MAX_ANSWER) -> Dict[str, Any]:
        zmq = self._zmq
        fields = dict(fields)
        value = fields.pop("value", None)
        if isinstance(value, bytes):
            fields.update(_zmq_value(value))
        rid = next(self._ids)
        request = {"id": rid, "op": op, **fields}
        if self._token is not None:
            request["token"] = self._token
        body = json.dumps(request, allow_nan=False, ensure_ascii=False).encode("utf-8")
        if len(body) > ZMQ_SEND_MAX:
            raise error_for(
                "too_large",
                f"the request is {len(body)} bytes; the broker takes at most {NODE_BODY_MAX}: nothing was sent",
            )
        sock = self._socket()
        deadline = time.monotonic() + self._timeout
        if not sock.poll(int(self._timeout * 1000), zmq.POLLOUT):
            self._drop()
            raise error_for(
                "busy",
                f"cannot reach the Chorus broker at {self.url} within {self._timeout} s; is `chorus serve "
                f"--zmq {self.url}` running there? Retry once it is",
            )
        sock.send_multipart([b"", body])
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(max(1, int(left * 1000)), zmq.POLLIN):
                # The socket goes, with whatever late reply would reach it.
                self._drop()
                raise error_for(
                    "busy",
                    f"the Chorus broker at {self.url} did not answer {op} within {self._timeout} s; "
                    "retry later (a write may have been applied: read before writing again)",
                )
            frames = sock.recv_multipart()
            if len(frames[-1]) > cap:
                raise _TooBig()
            try:
                reply = json.loads(frames[-1])
            except ValueError:
                continue
            # One request in flight per socket: a reply without an id is
            # the broker's answer to a request it could not read.
            if not isinstance(reply, dict) or reply.get("id") not in (rid, None):
                continue
            if not reply.get("ok"):
                raise _error_from(reply.get("error"), f"the broker refused {op} without saying why")
            reply.pop("id", None)
            reply.pop("ok", None)
            return reply


# ---------------------------------------------------------------------------
# The handles.


class _RemoteStore:
    """What both remote handles share: every method in terms of the
    broker's operations, which the HTTP transport maps to routes."""

    _kind = "remote"

    def __init__(self, transport: Any) -> None:
        self._t = transport
        self._closed = False
        self._node: Optional[str] = None

    # Handle.

    @property
    def url(self) -> str:
        """The node's URL, as given to ``chorus.connect``."""
        return self._t.url

    @property
    def path(self) -> str:
        """The node's URL (the embedded handle's ``path`` is its directory)."""
        return self._t.url

    @property
    def node_id(self) -> str:
        """The node's id (hex)."""
        if self._node is None:
            self._node = str(self._call("ping", {})["node"])
        return self._node

    def close(self) -> None:
        """Closes this handle's connections. Iterators and watches already
        made keep working until they end."""
        self._closed = True
        self._t.close()

    def __enter__(self) -> "_RemoteStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<chorus.{type(self).__name__} {self.url!r}{' (closed)' if self._closed else ''}>"

    def _call(self, op: str, fields: Dict[str, Any], cap: int = MAX_ANSWER) -> Dict[str, Any]:
        if self._closed:
            raise _invalid(f"this handle on {self.url} is closed: connect again with chorus.connect({self.url!r})")
        return self._t.call(op, fields, cap)

    def _pages(self, op: str, fields: Dict[str, Any], items: str) -> Iterator[Any]:
        """Every item of a paged listing, a page at a time; a page whose
        answer is too big is asked again with half the items."""
        after: Optional[str] = None
        limit = getattr(self._t, "page_limit", PAGE_LIMIT)
        while True:
            try:
                page = self._call(op, dict(fields, limit=limit, after=after), cap=PAGE_BYTES if limit > 1 else MAX_ANSWER)
            except _TooBig:
                if limit == 1:
                    raise error_for("internal", f"one item of {op} is over {MAX_ANSWER} bytes") from None
                limit = max(1, limit // 2)
                continue
            yield from page.get(items, [])
            after = page.get("next")
            if after is None:
                return

    # Keys.

    def _fetch(self, fp: FullPrefix, key: bytes, resolve: Optional[str] = None, allow_put: bool = False) -> Tuple[Optional[Read], str]:
        """The key's read (``None`` when absent or deleted) and, when
        absent, the context to create it with."""
        if not key:
            return None, EMPTY_CONTEXT  # as embedded: an empty key reads as absent
        fields: Dict[str, Any] = {"prefix": fp[0], "sub": fp[1], "key": _key_text(key)}
        if resolve is not None:
            fields.update(resolve=resolve, allow_put=allow_put)
        try:
            return Read.from_json(self._call("get", fields)), ""
        except Exception as e:
            if getattr(e, "code", None) == "not_found":
                return None, getattr(e, "context", None) or EMPTY_CONTEXT
            raise

    def _write(self, fp: FullPrefix, key: bytes, value: Optional[bytes], context: Optional[str], if_absent: bool = False) -> None:
        if not key:
            raise _invalid("the key is empty: keys are non-empty byte strings")
        fields: Dict[str, Any] = {"prefix": fp[0], "sub": fp[1], "key": _key_text(key)}
        if if_absent:
            fields["if_absent"] = True
        elif context is not None:
            fields["context"] = context
        if value is None:
            self._call("delete", fields)
        else:
            self._call("put", dict(fields, value=value))

    def _settled(self, fp: FullPrefix, key: bytes, resolver: Resolver, allow_put: bool) -> Tuple[Optional[Read], str]:
        """A read with a resolver applied; a function's choice is written
        back with the read's context when ``allow_put``."""
        if resolver == "lww":
            return self._fetch(fp, key, "lww", allow_put)
        read, empty = self._fetch(fp, key)
        if not callable(resolver) or read is None or len(read.siblings) <= 1:
            return read, empty
        chosen = _call_values(resolver, read.values)
        if allow_put:
            self._write(fp, key, chosen, read.context)
            return self._fetch(fp, key)
        return _settle(read, chosen, self.node_id), empty

    def get(
        self,
        full_prefix: str,
        key: Any,
        default: Any = None,
        *,
        resolver: Resolver = None,
        allow_put: bool = True,
    ) -> Any:
        """The key's value, or ``default`` when it is absent or deleted.
        Raises :class:`chorus.Conflict` when it holds siblings and no
        resolver settles them (``resolver="lww"`` or ``f(values)``); a
        settled read is written back when ``allow_put``."""
        fp = _full_prefix(full_prefix)
        k = _bytes_arg(key, "key")
        res = _resolver(resolver)
        _typed(allow_put, (bool,), "allow_put", "bool")
        read, _ = self._settled(fp, k, res, allow_put)
        if read is None:
            return default
        value = _single(fp, k, read)
        return default if value is None else value

    def read(self, full_prefix: str, key: Any, *, resolver: Resolver = None, allow_put: bool = True) -> Read:
        """Every sibling of the key and the context to write back with (an
        absent key reads as deleted, with the empty context)."""
        fp = _full_prefix(full_prefix)
        k = _bytes_arg(key, "key")
        res = _resolver(resolver)
        _typed(allow_put, (bool,), "allow_put", "bool")
        read, empty = self._settled(fp, k, res, allow_put)
        return read if read is not None else Read(siblings=[], context=empty, deleted=True)

    def put(
        self,
        full_prefix: str,
        key: Any,
        value: Any,
        *,
        context: Optional[str] = None,
        if_absent: bool = False,
    ) -> None:
        """Writes ``value``. Without ``context`` it supersedes every current
        sibling; with the context of a :meth:`read` it supersedes what that
        read saw. ``if_absent``: only if the key holds no live value, else
        :class:`chorus.Conflict` (a given context is then not sent: a
        create has none).

        A callable ``value`` receives the live values and returns the bytes
        to write (``None``: delete). Remotely this is optimistic: the
        values are read, the function called, and its result written with
        that read's context (not under the writer lock, as embedded), so a
        write that lands in between is kept as a sibling."""
        fp = _full_prefix(full_prefix)
        k = _bytes_arg(key, "key")
        context = _context_arg(context)
        _typed(if_absent, (bool,), "if_absent", "bool")
        if not callable(value):
            self._write(fp, k, _bytes_arg(value, "value"), context, if_absent)
            return
        if not k:
            raise _invalid("the key is empty: keys are non-empty byte strings")
        current, empty = self._fetch(fp, k)
        if if_absent and current is not None and current.values:
            raise error_for(
                "conflict",
                f"{fp[0]}/{fp[1]}/{_lossy(k)} exists and the write asked for an absent key: nothing was written; "
                "read it and write with its context",
            )
        chosen = _call_values(value, current.values if current is not None else [])
        # None deletes; on an absent key that writes a tombstone, as the
        # embedded handle's writer function does.
        self._write(fp, k, chosen, context or (current.context if current is not None else empty), if_absent)

    def delete(self, full_prefix: str, key: Any, *, context: Optional[str] = None) -> None:
        """Writes a tombstone. Raises :class:`chorus.NotFound` when the key
        is absent or already deleted."""
        fp = _full_prefix(full_prefix)
        k = _bytes_arg(key, "key")
        context = _context_arg(context)
        current, _ = self._fetch(fp, k)
        if current is None:
            raise error_for("not_found", f"{fp[0]}/{fp[1]}/{_lossy(k)} not found; nothing deleted")
        self._write(fp, k, None, context)

    # Iteration.

    def _full_prefixes(self, scope: Tuple[str, ...]) -> Iterator[FullPrefix]:
        if len(scope) == 2:
            yield scope  # type: ignore[misc]
            return
        prefixes: Iterator[str] = iter([scope[0]]) if scope else self._pages("prefixes", {}, "prefixes")
        for prefix in prefixes:
            for entry in self._pages("subprefixes", {"prefix": prefix}, "subprefixes"):
                sub = entry["subprefix"]
                if not scope and sub.startswith("$"):
                    continue  # everything: Chorus's own names only when named
                yield prefix, sub

    def _items(self, scope: Tuple[str, ...], match: Optional[str], resolver: Resolver, allow_put: bool) -> Iterator[Item]:
        for fp in self._full_prefixes(scope):
            fields: Dict[str, Any] = {"prefix": fp[0], "sub": fp[1]}
            if match is not None:
                fields["match"] = match
            for entry in self._pages("list", fields, "keys"):
                key = _key_of(entry)
                read = Read.from_json(entry)
                if resolver is not None and len(read.siblings) > 1:
                    settled = self._settle_item(fp, key, read, resolver, allow_put)
                    if settled is None:
                        continue
                    read = settled
                yield Item(full_prefix=f"{fp[0]}/{fp[1]}", key=key, read=read)

    def _settle_item(self, fp: FullPrefix, key: bytes, read: Read, resolver: Resolver, allow_put: bool) -> Optional[Read]:
        if resolver == "lww":
            return self._fetch(fp, key, "lww", allow_put)[0]
        chosen = _call_values(resolver, read.values)  # type: ignore[arg-type]
        if allow_put:
            self._write(fp, key, chosen, read.context)
        return _settle(read, chosen, read.siblings[0].node)

    def iter(
        self,
        scope: Optional[str] = None,
        *,
        match: Optional[str] = None,
        resolver: Resolver = None,
        allow_put: bool = False,
        tombstones: bool = False,
    ) -> Iterator[Item]:
        """Every live key of ``scope`` (``"prefix/sub"``, ``"prefix"``, or
        ``None`` for everything but Chorus's own ``$`` names), a page at a
        time, in key order. ``match`` is a glob (``*``, ``?``, ``\\``)."""
        sc = _scope(scope)
        match = _opt_str(match, "match")
        res = _resolver(resolver)
        _typed(allow_put, (bool,), "allow_put", "bool")
        _typed(tombstones, (bool,), "tombstones", "bool")
        if tombstones:
            raise _invalid(
                f"iter(tombstones=True) is not available on {self.url}: the node lists live keys only; "
                "open its data directory with chorus.open(path) on its machine to see tombstones"
            )
        return self._items(sc, match, res, allow_put)

    def items(self, full_prefix: str, *, match: Optional[str] = None, resolver: Resolver = None) -> Iterator[Tuple[bytes, bytes]]:
        """``(key, value)`` of every live key of one full prefix; raises
        :class:`chorus.Conflict` on a key with unresolved siblings."""
        fp = _full_prefix(full_prefix)
        match = _opt_str(match, "match")
        res = _resolver(resolver)

        def pairs() -> Iterator[Tuple[bytes, bytes]]:
            for item in self._items(fp, match, res, False):
                value = _single(fp, item.key, item.read)
                if value is not None:
                    yield item.key, value

        return pairs()

    def keys(self, full_prefix: str, *, match: Optional[str] = None) -> Iterator[bytes]:
        """The live keys of one full prefix."""
        fp = _full_prefix(full_prefix)
        match = _opt_str(match, "match")
        return (item.key for item in self._items(fp, match, None, False))

    def prefix_hash(self, scope: str) -> str:
        """Hex hash of a full prefix's (or a prefix's) content: equal on two
        nodes exactly when they hold the same objects."""
        sc = _scope(scope)
        if not sc:
            raise _invalid("prefix_hash needs a prefix or a full prefix")
        fields = {"prefix": sc[0]}
        if len(sc) == 2:
            fields["sub"] = sc[1]
        return str(self._call("hash", fields)["hash"])

    # What only the embedded handle has.

    def transaction(self) -> Any:
        """Not available remotely: raises :class:`chorus.InvalidInput`."""
        raise _invalid(
            f"transactions exist only in the embedded handle: the node at {self.url} commits each write alone. "
            "Open the data directory with chorus.open(path) on the node's machine, or write with contexts "
            "(read(), then put(..., context=read.context)) so that concurrent writes are kept as siblings"
        )

    def snapshot(self) -> Any:
        """Not available remotely: raises :class:`chorus.InvalidInput`."""
        raise _invalid(
            f"snapshots exist only in the embedded handle: the node at {self.url} keeps none for a client. "
            "Open the data directory with chorus.open(path) on the node's machine, or read with iter() "
            "(a page at a time) and prefix_hash() to tell whether anything changed meanwhile"
        )

    # Documents and operation logs.

    def docs(self, name: str) -> "RemoteDocs":
        """A document store of the node: ``NAME`` (kept under ``docs/NAME``)
        or ``PREFIX/NAME``."""
        if self._closed:
            raise _invalid(f"this handle on {self.url} is closed: connect again with chorus.connect({self.url!r})")
        return RemoteDocs(self, _store_name(name))

    @property
    def oplogs(self) -> "RemoteOplogs":
        """The node's operation logs."""
        return RemoteOplogs(self)

    def watch(
        self,
        scope: Optional[str] = None,
        *,
        key: Any = None,
        from_: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Iterator[Union[Change, Gap]]:
        """Changes from now on (or after ``from_``): see each handle."""
        raise NotImplementedError


def _settle(read: Read, chosen: Optional[bytes], node: str) -> Read:
    """A read settled by a function without writing: one sibling, the
    latest timestamp, the read's context (as embedded)."""
    ts = max((s.timestamp for s in read.siblings), default=0)
    return Read(siblings=[Sibling(value=chosen, timestamp=ts, node=node)], context=read.context, deleted=chosen is None)


def _single(fp: FullPrefix, key: bytes, read: Read) -> Optional[bytes]:
    values = read.values
    if len(values) > 1:
        raise error_for(
            "conflict",
            f"{fp[0]}/{fp[1]}/{_lossy(key)} holds {len(values)} siblings: read them with read(), "
            "or settle them with resolver=\"lww\" or a function",
        )
    return values[0] if values else None


class RemoteDocs:
    """A document store on a node: JSON objects with ``_id`` and ``_rev``,
    CouchDB's rules for revisions and conflicts (as :class:`chorus.Docs`)."""

    def __init__(self, store: _RemoteStore, name: str) -> None:
        self._store = store
        self.name = name

    def __repr__(self) -> str:
        return f"<chorus.RemoteDocs {self.name!r} on {self._store.url!r}>"

    def _call(self, op: str, **fields: Any) -> Dict[str, Any]:
        return self._store._call(op, dict(fields, store=self.name))

    @staticmethod
    def _saved(answer: Dict[str, Any]) -> Dict[str, Any]:
        return {"ok": True, "_id": answer["_id"], "_rev": answer["_rev"]}

    def create(self, doc: Dict[str, Any]) -> Dict[str, Any]:
        """Creates a document (with ``_id``, or one is made); returns
        ``{"ok": True, "_id": ..., "_rev": ...}``."""
        return self._saved(self._call("doc.create", doc=_doc_arg(doc)))

    def get(self, id: str, *, conflicts: bool = False, rev: Optional[str] = None) -> Dict[str, Any]:
        """The winning revision (with ``_conflicts`` when ``conflicts``), or
        revision ``rev``."""
        doc_id = _str_arg(id, "document id")
        _typed(conflicts, (bool,), "conflicts", "bool")
        rev = _opt_str(rev, "rev")
        fields: Dict[str, Any] = {"doc_id": doc_id}
        if rev is not None:
            fields["rev"] = rev  # as embedded: rev wins over conflicts
        elif conflicts:
            fields["conflicts"] = True
        return self._call("doc.get", **fields)["doc"]

    def update(self, doc: Dict[str, Any], *, keep_both: bool = False) -> Dict[str, Any]:
        """Saves a new revision of ``doc`` (its ``_rev`` must be current,
        unless ``keep_both``, which keeps both edits as conflicting
        revisions)."""
        body = _doc_arg(doc)
        _typed(keep_both, (bool,), "keep_both", "bool")
        if "_id" not in body:
            raise _invalid("an update needs _id: the document's id")
        if "_rev" not in body:
            raise _invalid("an update needs _rev: the revision it edits, as a read returned it (or use upsert)")
        _str_arg(body["_id"], "document id")
        fields: Dict[str, Any] = {"doc": body}
        if keep_both:
            fields["keep_both"] = True
        return self._saved(self._call("doc.update", **fields))

    def delete(self, id: str, rev: str) -> Dict[str, Any]:
        """Deletes revision ``rev`` of the document."""
        doc_id = _str_arg(id, "document id")
        rev = _str_arg(rev, "revision")
        return self._saved(self._call("doc.delete", doc_id=doc_id, rev=rev))

    def conflicts(self, id: str) -> List[str]:
        """The revisions in conflict with the winner."""
        doc_id = _str_arg(id, "document id")
        doc = self._call("doc.get", doc_id=doc_id, conflicts=True)["doc"]
        return [str(r) for r in doc.get("_conflicts", [])]

    def resolve(self, id: str, winner: str) -> Dict[str, Any]:
        """Keeps revision ``winner`` and deletes every other leaf."""
        doc_id = _str_arg(id, "document id")
        winner = _str_arg(winner, "revision")
        return self._saved(self._call("doc.resolve", doc_id=doc_id, rev=winner))

    def all(self) -> List[Dict[str, Any]]:
        """Every live document's winning revision, by id (read a page at a
        time)."""
        return list(self._store._pages("doc.all", {"store": self.name}, "docs"))


class RemoteOplogs:
    """The node's operation logs (as :class:`chorus.Oplogs`, without
    ``register``: reducers run inside the node)."""

    def __init__(self, store: _RemoteStore) -> None:
        self._store = store

    def _fields(self, full_prefix: str, path: Any) -> Dict[str, Any]:
        fp = _full_prefix(full_prefix)
        return {"prefix": fp[0], "sub": fp[1], "path": _str_arg(path, "log path")}

    def push(self, full_prefix: str, path: str, kind: str, payload: Any) -> Any:
        """Appends an operation of log type ``kind`` to the log at ``path``;
        returns the log's value after it."""
        fields = self._fields(full_prefix, path)
        fields["type"] = _str_arg(kind, "log type")
        fields["payload"] = _json_arg(payload, "payload")
        return self._store._call("op.push", fields)["value"]

    def get(self, full_prefix: str, path: str) -> Any:
        """The log's value: its operations folded by its reducer."""
        return self._store._call("op.get", self._fields(full_prefix, path))["value"]

    def log(self, full_prefix: str, path: str) -> Dict[str, Any]:
        """The log itself: ``{"type", "checkpoint", "ops", "late"}``."""
        return dict(self._store._call("op.log", self._fields(full_prefix, path)))

    def register(self, kind: str, reduce: Callable[[Any, Dict[str, Any]], Any], init: Any = None) -> None:
        """Not available remotely: raises :class:`chorus.InvalidInput`."""
        raise _invalid(
            f"oplogs.register defines a reducer in this process, which the node at {self._store.url} cannot run: "
            "set a script reducer on the node (`chorus reducer set TYPE FILE`, docs/oplogs.md), use a built-in "
            "type (counter, max, min, set, list, json-merge, register), or open the directory with chorus.open(path)"
        )


class RemoteStore(_RemoteStore):
    """A node's HTTP API, with the embedded :class:`chorus.Store`'s methods.

    Made by ``chorus.connect("http://HOST:PORT")``. Usable from any thread
    (each thread keeps its own kept-alive connection); after ``fork()`` the
    child opens connections of its own."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 30.0) -> None:
        super().__init__(_HttpTransport(url, token, timeout))

    def watch(
        self,
        scope: Optional[str] = None,
        *,
        key: Any = None,
        from_: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> "RemoteWatch":
        """Changes from now on (or after the change whose ``id`` is
        ``from_``), for ever or until ``timeout`` seconds pass without one,
        read from the node's ``/v1/watch`` stream."""
        sc = _scope(scope)
        k = None if key is None else _bytes_arg(key, "key")
        if k is not None and len(sc) != 2:
            raise _invalid(
                "watch(key=...) needs the key's full prefix as the scope: watch(\"prefix/sub\", key=...)"
            )
        from_ = _opt_str(from_, "from_")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise _invalid(f"timeout= must be a number of seconds, not {_type_name(timeout)}")
            if not (math.isfinite(timeout) and timeout >= 0):
                raise _invalid(f"timeout={timeout} is not a number of seconds >= 0")
        if self._closed:
            raise _invalid(f"this handle on {self.url} is closed: connect again with chorus.connect({self.url!r})")
        query: Dict[str, Any] = {}
        if sc:
            query["prefix"] = "/".join(sc)
        if k is not None:
            try:
                query["match"] = _glob_escape(k.decode("utf-8"))
            except UnicodeDecodeError:
                pass  # filtered here only
        return RemoteWatch(self._t, query, k, from_, None if timeout is None else float(timeout))


class RemoteWatch:
    """The changes a node's ``/v1/watch`` stream reports, as
    :class:`chorus.Change` (and :class:`chorus.Gap`).

    A thread reads the stream ahead of the caller (at most a few dozen
    events: then the node waits). ``close()`` (or leaving a ``with``
    block) ends it."""

    def __init__(self, transport: _HttpTransport, query: Dict[str, Any], key: Optional[bytes], from_: Optional[str], timeout: Optional[float]) -> None:
        self._t = transport
        self._query = query
        self._key = key
        self._start = from_
        self._last: Optional[str] = None
        self._timeout = timeout
        self._closed = False
        self._conn: Optional[http.client.HTTPConnection] = None
        self._stop = threading.Event()
        self._queue: "queue.Queue[Tuple[str, Any]]" = queue.Queue(WATCH_QUEUE)
        self._open(from_, resume=False)

    def _open(self, position: Optional[str], resume: bool) -> None:
        """Starts a stream (after ``position``, else from now) and its
        reader."""
        t = self._t
        query = dict(self._query)
        headers = t.headers()
        headers["Accept"] = "text/event-stream"
        if position is not None:
            if resume:
                headers["Last-Event-ID"] = position
            else:
                query["from"] = position
        conn = t.new_connection(pooled=False)
        try:
            conn.request("GET", t.path("v1", "watch", query=query), headers=headers)
            resp = conn.getresponse()
            if resp.status != 200:
                data = resp.read(1 << 20)
                conn.close()
                try:
                    body = json.loads(data)
                except ValueError:
                    body = None
                raise _error_from(body, f"the watch stream of {t.url} failed with HTTP {resp.status}")
            if conn.sock is not None:
                conn.sock.settimeout(WATCH_SILENCE)
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise t.unreachable(e, False) from None
        self._stop = threading.Event()
        self._queue = queue.Queue(WATCH_QUEUE)
        self._conn = conn
        reader = threading.Thread(
            target=_read_events, args=(conn, resp, self._queue, self._stop), name="chorus-watch", daemon=True
        )
        reader.start()

    def _end_stream(self) -> None:
        """Stops the reader: its socket is shut down here (which wakes it)
        and closed by the reader itself."""
        self._stop.set()
        conn, self._conn = self._conn, None
        sock = conn.sock if conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Ends the stream."""
        self._closed = True
        self._end_stream()

    def __enter__(self) -> "RemoteWatch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._end_stream()
        except Exception:
            pass

    def __iter__(self) -> "RemoteWatch":
        return self

    def __next__(self) -> Union[Change, Gap]:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        failures = 0
        while True:
            if self._closed:
                raise StopIteration
            wait = 1.0
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise StopIteration
            try:
                kind, data = self._queue.get(timeout=wait)
            except queue.Empty:
                continue
            if kind == "change":
                change = Change.from_json(json.loads(data))
                self._last = change.id
                if self._key is not None and change.key != self._key:
                    continue
                return change
            if kind == "overflow":
                self._end_stream()
                self._open(None, resume=False)
                return Gap(resume=self._last or self._start or "")
            if kind == "error":
                self.close()
                try:
                    body = json.loads(data)
                except ValueError:
                    body = None
                raise _error_from(body, f"the watch stream of {self._t.url} ended with an error: {data}")
            # The stream ended or broke: go on from the last change seen,
            # waiting longer after each failed attempt.
            self._end_stream()
            while True:
                failures += 1
                if failures > WATCH_RECONNECTS:
                    self.close()
                    raise self._t.unreachable(f"the watch stream broke {failures - 1} times ({data})", False)
                time.sleep(min(5.0, 0.2 * 2 ** (failures - 1)))
                position = self._last or self._start
                try:
                    self._open(position, resume=position is not None)
                    break
                except Busy as e:  # the node is still away: try again
                    data = str(e)
                except BaseException:
                    # Refused (a token, a scope): the watch is over.
                    self.close()
                    raise


def _read_events(
    conn: http.client.HTTPConnection,
    resp: http.client.HTTPResponse,
    out: "queue.Queue[Tuple[str, Any]]",
    stop: threading.Event,
) -> None:
    """Reads server-sent events into ``out`` until the stream ends or
    ``stop`` is set: ``(event, data)``, then ``("end", why)``; closes the
    connection when done."""

    def put(item: Tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    event, data = "message", []  # type: Tuple[str, List[str]]
    size = 0  # bytes of data lines in this event
    try:
        while not stop.is_set():
            line = resp.readline(MAX_EVENT_LINE + 1)
            if not line:
                put(("end", "the node closed the stream"))
                return
            if len(line) > MAX_EVENT_LINE:
                put(("end", f"an event line over {MAX_EVENT_LINE} bytes"))
                return
            line = line.rstrip(b"\r\n")
            if not line:
                if data and not put((event, "\n".join(data))):
                    return
                if event in ("overflow", "error"):
                    return
                event, data, size = "message", [], 0
                continue
            if line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"event":
                event = value.decode("utf-8", "replace")
            elif name == b"data":
                size += len(value)
                if size > MAX_EVENT_LINE:
                    put(("end", f"an event over {MAX_EVENT_LINE} bytes"))
                    return
                data.append(value.decode("utf-8", "replace"))
    except Exception as e:  # whatever broke the stream, the caller reconnects
        if not stop.is_set():
            put(("end", str(e) or type(e).__name__))
    finally:
        try:
            resp.close()
            conn.close()
        except Exception:
            pass


class ZmqStore(_RemoteStore):
    """A node's ZeroMQ broker (``chorus serve --zmq``), with the embedded
    :class:`chorus.Store`'s methods but ``watch`` (the broker's events
    cannot resume: use the HTTP handle), ``transaction`` and ``snapshot``.

    Made by ``chorus.connect("tcp://HOST:PORT")``; needs pyzmq. Each thread
    uses a DEALER socket of its own, one request in flight."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 30.0) -> None:
        super().__init__(_ZmqTransport(url, token, timeout))

    def watch(
        self,
        scope: Optional[str] = None,
        *,
        key: Any = None,
        from_: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Iterator[Union[Change, Gap]]:
        """Not available over ZeroMQ: raises :class:`chorus.InvalidInput`."""
        raise _invalid(
            f"watch is not available over ZeroMQ ({self.url}): the broker's PUB socket drops events for a slow "
            "subscriber and cannot resume from a change. Watch over HTTP: "
            "chorus.connect('http://HOST:7800').watch(...) reads /v1/watch, which resumes from a change's id"
        )


def connect(url: str, token: Optional[str] = None, timeout: float = 30.0) -> _RemoteStore:
    """A handle on a remote node: :class:`RemoteStore` for
    ``http://HOST:PORT[/PATH]`` (its HTTP API), :class:`ZmqStore` for
    ``tcp://HOST:PORT`` or ``ipc://PATH`` (its ZeroMQ broker, with pyzmq).
    ``token`` (``chorus token create``) is sent with every request;
    ``timeout`` is how many seconds a request may wait for the node.
    Nothing is sent until the first call."""
    url = _str_arg(url, "url")
    if token is not None:
        token = _str_arg(token, "token")
        if not token or any(c in token for c in "\r\n\0") or not token.isascii():
            raise _invalid("the token is empty or holds characters a token never has: pass it as `chorus token create` printed it")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise _invalid(f"timeout= must be a number of seconds, not {_type_name(timeout)}")
    if not (math.isfinite(timeout) and 0 < timeout <= 86_400):
        raise _invalid(f"timeout={timeout} is not a number of seconds above 0 and at most 86400")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("http", "https"):
        return RemoteStore(url, token, float(timeout))
    if scheme in ("tcp", "ipc"):
        return ZmqStore(url, token, float(timeout))
    raise _invalid(
        f"{url!r} is not a node's URL: write http://HOST:PORT (the HTTP API, chorus serve --http) "
        "or tcp://HOST:PORT (the ZeroMQ broker, chorus serve --zmq)"
    )
