"""Chorus: replicated metadata, embedded in this process or on a remote node.

``chorus.open(path)`` opens a data directory with the embedded engine: no
server, shared by every process on the machine that opens it, reads from
this process's memory, writes durable on disk when they return.

``chorus.connect(url)`` talks to a ``chorus serve`` node over HTTP
(``http://host:7800``) or to its ZeroMQ broker (``tcp://host:7801``, with
the ``zmq`` extra), with the same methods where the node offers them.

``chorus.om`` is Open Metadata's API over Chorus.

Every failure is a :class:`chorus.Error`; its subclasses match the
``chorus`` command's exit codes (``e.exit_code``) and the HTTP API's error
codes (``e.code``)."""

from chorus._chorus import (
    Busy,
    Conflict,
    Corruption,
    Docs,
    Error,
    Forbidden,
    InternalError,
    InvalidInput,
    LockTimeout,
    NotFound,
    NotServed,
    Oplogs,
    Snapshot,
    StorageError,
    Store,
    Transaction,
    Unauthorized,
    Unreachable,
    WriteConflict,
    __version__,
    error_for,
    kinds,
    open,
)
from chorus._types import Change, Gap, Item, Read, Sibling

__all__ = [
    "Busy",
    "Change",
    "Conflict",
    "Corruption",
    "Docs",
    "Error",
    "Forbidden",
    "Gap",
    "InternalError",
    "InvalidInput",
    "Item",
    "LockTimeout",
    "NotFound",
    "NotServed",
    "Oplogs",
    "Read",
    "Sibling",
    "Snapshot",
    "StorageError",
    "Store",
    "Transaction",
    "Unauthorized",
    "Unreachable",
    "WriteConflict",
    "__version__",
    "connect",
    "error_for",
    "kinds",
    "open",
]


def connect(url, token=None, timeout=30.0):
    """A handle on a remote node: ``http://HOST:PORT`` (its HTTP API) or
    ``tcp://HOST:PORT`` (its ZeroMQ broker; needs ``pip install
    chorus-store[zmq]``). ``token`` is a scoped token (``chorus token``),
    sent with every request."""
    from chorus.remote import connect as _connect

    return _connect(url, token=token, timeout=timeout)
