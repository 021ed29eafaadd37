"""Type stubs of Chorus's native module (the embedded engine)."""

from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from chorus._types import Change, Gap, Item, Read

Bytesish = Union[bytes, bytearray, memoryview, str]
Resolver = Union[None, str, Callable[[List[bytes]], Optional[bytes]]]
Scope = Optional[str]

__version__: str

class Error(Exception):
    """Every Chorus failure. ``code`` is the stable code every interface
    shows (``"not_found"``, ...); ``exit_code`` is what the ``chorus``
    command exits with for it; ``str(e)`` is the message it prints."""

    code: str
    exit_code: int

class NotFound(Error): ...
class InvalidInput(Error): ...
class Unauthorized(Error): ...
class Forbidden(Error): ...
class Conflict(Error): ...

class WriteConflict(Conflict):
    """A transaction's keys changed before it committed; nothing was
    written. ``keys`` lists them as ``(full_prefix, key)``."""

    keys: List[Tuple[str, bytes]]

class Busy(Error): ...
class LockTimeout(Busy): ...
class StorageError(Error): ...
class Corruption(StorageError): ...
class InternalError(Error): ...

class NotServed(Error):
    """The full prefix is in a channel this node does not serve; ask a
    node that serves it (over HTTP, ``?forward=true`` asks the node to).
    ``channel`` names the channel, ``nodes`` the ids of its nodes (and,
    from a remote node, their addresses: dicts with ``id``, ``http``,
    ``gossip``)."""

    channel: str
    nodes: List[Any]

class Unreachable(Error):
    """A node a request was forwarded to could not be reached."""

def error_for(code: str, message: str) -> Error:
    """The exception for a stable error code (as sent by the HTTP API and
    the broker), with this message."""

def kinds() -> List[Tuple[str, int, int]]:
    """Every error kind: ``(code, exit_code, http_status)``."""

def open(
    path: str,
    sync: str = "always",
    lock_timeout: float = 10.0,
    create: bool = True,
) -> "Store":
    """Opens (creating it unless ``create=False``) the data directory
    ``path``. Any number of processes may open it at once."""

class Store:
    """A data directory, shared with every other process that opens it.

    Reads come from this process's memory; a write returns once it is on
    disk (``sync="always"``). Keys and values are bytes (``str`` is
    accepted and stored as UTF-8). A full prefix is ``"prefix/subprefix"``.
    Usable from any thread; the GIL is released while a call waits."""

    path: str
    node_id: str

    def close(self) -> None: ...
    def __enter__(self) -> "Store": ...
    def __exit__(self, *exc: Any) -> None: ...
    def get(
        self,
        full_prefix: str,
        key: Bytesish,
        default: Optional[bytes] = None,
        *,
        resolver: Resolver = None,
        allow_put: bool = True,
    ) -> Optional[bytes]:
        """The key's value, or ``default`` when it is absent or deleted.
        Raises :class:`Conflict` when it holds siblings and no resolver
        settles them (``resolver="lww"`` or ``f(values) -> bytes | None``);
        a settled read is written back when ``allow_put``."""
    def read(
        self,
        full_prefix: str,
        key: Bytesish,
        *,
        resolver: Resolver = None,
        allow_put: bool = True,
    ) -> Read:
        """Every sibling of the key and the context to write back with
        (an absent key reads as deleted, with the empty context)."""
    def put(
        self,
        full_prefix: str,
        key: Bytesish,
        value: Union[Bytesish, Callable[[List[bytes]], Optional[bytes]]],
        *,
        context: Optional[str] = None,
        if_absent: bool = False,
    ) -> None:
        """Writes ``value``. Without ``context`` it supersedes every
        current sibling; with the context of a :meth:`read` it supersedes
        what that read saw, keeping later writes as siblings. A callable
        receives the current live values under the writer lock and returns
        the bytes to write (``None``: delete)."""
    def delete(self, full_prefix: str, key: Bytesish, *, context: Optional[str] = None) -> None:
        """Writes a tombstone. Raises :class:`NotFound` when the key is
        absent or already deleted."""
    def iter(
        self,
        scope: Scope = None,
        *,
        match: Optional[str] = None,
        resolver: Resolver = None,
        allow_put: bool = False,
        tombstones: bool = False,
    ) -> Iterator[Item]:
        """Every key of ``scope`` (``"prefix/sub"``, ``"prefix"`` for all its
        subprefixes, ``None`` for everything; reserved ``$`` prefixes
        only when named), as of the call, in the index's order (not
        sorted). ``match`` is a glob (``*``, ``?``, ``\\`` escapes)."""
    def items(
        self,
        full_prefix: str,
        *,
        match: Optional[str] = None,
        resolver: Resolver = None,
    ) -> Iterator[Tuple[bytes, bytes]]:
        """``(key, value)`` of every live key of one full prefix; raises
        :class:`Conflict` on a key with unresolved siblings."""
    def keys(self, full_prefix: str, *, match: Optional[str] = None) -> Iterator[bytes]: ...
    def prefix_hash(self, scope: str) -> str:
        """Hex hash of a full prefix's (or a prefix's) content: equal on two
        nodes exactly when they hold the same objects."""
    def transaction(self) -> "Transaction":
        """``with db.transaction() as tx:`` reads and writes that commit
        together at the end of the block, or not at all; raises
        :class:`WriteConflict` when a key it read changed meanwhile."""
    def snapshot(self) -> "Snapshot":
        """A consistent read-only view as of now."""
    def docs(self, name: str) -> "Docs": ...
    @property
    def oplogs(self) -> "Oplogs": ...
    def watch(
        self,
        scope: Scope = None,
        *,
        key: Optional[Bytesish] = None,
        from_: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Iterator[Union[Change, Gap]]:
        """Changes from now on (or after the change whose ``id`` is
        ``from_``), for ever or until ``timeout`` seconds pass without one."""

class Transaction:
    def __enter__(self) -> "Transaction": ...
    def __exit__(self, *exc: Any) -> None: ...
    def get(self, full_prefix: str, key: Bytesish, default: Optional[bytes] = None) -> Optional[bytes]: ...
    def read(self, full_prefix: str, key: Bytesish) -> Read: ...
    def put(self, full_prefix: str, key: Bytesish, value: Bytesish, *, context: Optional[str] = None) -> None: ...
    def delete(self, full_prefix: str, key: Bytesish, *, context: Optional[str] = None) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...

class Snapshot:
    def get(self, full_prefix: str, key: Bytesish, default: Optional[bytes] = None) -> Optional[bytes]: ...
    def read(self, full_prefix: str, key: Bytesish) -> Read: ...
    def iter(self, scope: Scope = None, *, match: Optional[str] = None, tombstones: bool = False) -> Iterator[Item]: ...

class Docs:
    """A document store: JSON objects with ``_id`` and ``_rev``, CouchDB's
    rules for revisions and conflicts."""

    name: str
    def create(self, doc: Dict[str, Any]) -> Dict[str, Any]:
        """Returns ``{"ok": True, "_id": ..., "_rev": ...}``."""
    def get(self, id: str, *, conflicts: bool = False, rev: Optional[str] = None) -> Dict[str, Any]: ...
    def update(self, doc: Dict[str, Any], *, keep_both: bool = False) -> Dict[str, Any]: ...
    def delete(self, id: str, rev: str) -> Dict[str, Any]: ...
    def conflicts(self, id: str) -> List[str]: ...
    def resolve(self, id: str, winner: str) -> Dict[str, Any]: ...
    def all(self) -> List[Dict[str, Any]]: ...

class Oplogs:
    """Typed operation logs: pushes folded by a reducer into a value."""

    def push(self, full_prefix: str, path: str, kind: str, payload: Any) -> Any: ...
    def get(self, full_prefix: str, path: str) -> Any: ...
    def log(self, full_prefix: str, path: str) -> Dict[str, Any]: ...
    def register(
        self,
        kind: str,
        reduce: Callable[[Any, Dict[str, Any]], Any],
        init: Any = None,
    ) -> None:
        """A reducer of this process only: ``reduce(state, op) -> state``."""

# The native half of chorus.om (use chorus.om, not these).
def om_write(store: Store, full_prefix: str, location: str, path: List[str], ty: str, raw: str, user: str) -> None: ...
def om_read(store: Store, full_prefix: str, location: str, path: List[str], inherit: bool) -> Optional[Tuple[str, str, str]]: ...
def om_list(store: Store, full_prefix: str, location: str, group: List[str]) -> List[Tuple[str, str]]: ...
def om_history(store: Store, full_prefix: str, location: str, path: List[str]) -> List[Tuple[str, str, str, str]]: ...
def om_restore(store: Store, full_prefix: str, location: str, path: List[str], stamp: str, user: str) -> None: ...
def om_delete(store: Store, full_prefix: str, location: str, path: List[str], permanent: bool) -> bool: ...
def om_import(store: Store, root: str, full_prefix_: str, progress: Optional[Callable[[str, int, Optional[int]], Any]] = None) -> Dict[str, int]: ...
def om_export(store: Store, root: str, full_prefix_: str, force: bool = False, progress: Optional[Callable[[str, int, Optional[int]], Any]] = None) -> Dict[str, int]: ...
def stage_push(store: Store) -> int: ...
def stage_push_status(store: Store, request: int) -> Tuple[str, str]: ...

# Name checks the remote client shares with the engine.
def split_full_prefix(text: str) -> Tuple[str, str]: ...
def check_names(prefix: str, subprefix: str) -> None: ...
