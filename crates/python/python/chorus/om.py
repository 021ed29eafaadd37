"""Open Metadata's API over Chorus.

Open Metadata (shared/seeds/000) keeps metadata in ``.meta`` folders beside
the files it describes; this module keeps the same entries, with the same
names, types and history rules, in a Chorus store, so that the seed's
example runs as written::

    import chorus.om as om
    location = om.Location('/server/location')
    dataset = om.Dataset('new_data.string', data='a value', parent=location)
    om.commit(dataset)   # durable in the local stage (~/.chorus/stage)
    om.push()            # the stage daemon sends it upstream now

Where entries go: the store is the stage directory (``$CHORUS_STAGE_DIR``,
else ``~/.chorus/stage``) unless :func:`configure` names another store;
every entry lives under one full prefix (``om/default`` unless
configured), at the key ``<location>/.meta/<group>/.../<name>``, where the
location is the directory's path relative to the configured root (``/``
by default, so ``/server/location`` is ``server/location``). The key
layout is the one ``chorus om import`` and ``chorus om export`` use, so a
tree imported with its root configured here reads the same.

Types are Open Metadata's: ``bool``, ``int``, ``float``, ``string``,
``text``, ``null``, ``tuple``, ``date`` for values, ``dict`` and ``list``
for groups. A value is stored as the JSON text Open Metadata writes
(``json.dumps``); an empty value means the type's default.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import chorus
from chorus import _chorus

VALUE_TYPES = ("bool", "int", "float", "string", "text", "null", "tuple", "date")
GROUP_TYPES = ("dict", "list")

_lock = threading.Lock()
_config: Dict[str, Any] = {"store": None, "path": None, "full_prefix": "om/default", "root": "/", "pid": None}


def stage_dir() -> str:
    """The stage directory: ``$CHORUS_STAGE_DIR``, else ``~/.chorus/stage``."""
    return os.path.expanduser(os.environ.get("CHORUS_STAGE_DIR") or "~/.chorus/stage")


def configure(
    store: Union[None, str, "chorus.Store"] = None,
    full_prefix: Optional[str] = None,
    root: Optional[str] = None,
) -> None:
    """Where entries go: ``store`` (a path or an open ``chorus.Store``;
    default the stage directory), the ``full_prefix`` (default
    ``om/default``) and the ``root`` that locations are relative to
    (default ``/``)."""
    with _lock:
        if store is not None:
            _config["store"] = chorus.open(store) if isinstance(store, (str, os.PathLike)) else store
            _config["path"] = _config["store"].path
            _config["pid"] = os.getpid()
        if full_prefix is not None:
            if not isinstance(full_prefix, str) or full_prefix.count("/") != 1:
                raise chorus.InvalidInput(
                    f"full_prefix={full_prefix!r} is not PREFIX/SUBPREFIX, for example 'om/default'"
                )
            _config["full_prefix"] = full_prefix
        if root is not None:
            _config["root"] = os.path.abspath(os.fspath(root))


def _store() -> "chorus.Store":
    with _lock:
        # A store opened before fork() belongs to the parent: open the
        # same directory anew (the configured one, else the stage).
        if _config["store"] is None or _config["pid"] != os.getpid():
            _config["store"] = chorus.open(_config["path"] or stage_dir())
            _config["pid"] = os.getpid()
        return _config["store"]


def _location_of(path: Union[str, os.PathLike]) -> str:
    """A directory's location: its path relative to the configured root."""
    absolute = os.path.abspath(os.fspath(path))
    rel = os.path.relpath(absolute, _config["root"])
    if rel == ".":
        return ""
    if rel.startswith(".."):
        raise chorus.InvalidInput(
            f"{absolute} is outside the configured root {_config['root']}: "
            "configure(root=...) a directory that holds it"
        )
    return rel.replace(os.sep, "/")


def _split_name(name: str) -> Tuple[str, Optional[str]]:
    """``'frames.int'`` -> ``('frames', 'int')``; ``'frames'`` -> ``('frames', None)``."""
    if not isinstance(name, str) or not name:
        raise chorus.InvalidInput(f"an entry name must be a non-empty str, not {name!r}")
    base, dot, suffix = name.rpartition(".")
    if dot and base and suffix in VALUE_TYPES + GROUP_TYPES:
        return base, suffix
    return name, None


def _infer(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, (tuple, list)):
        return "tuple"
    if isinstance(value, (_dt.datetime, _dt.date)):
        return "date"
    if isinstance(value, dict):
        return "dict"
    raise chorus.InvalidInput(
        f"Open Metadata has no type for a {type(value).__name__}: "
        "use bool, int, float, str, None, a tuple, a date or a dict"
    )


def _encode(ty: str, value: Any) -> str:
    """The file content Open Metadata writes for ``value`` of type ``ty``."""
    if ty == "date" and isinstance(value, (_dt.datetime, _dt.date)):
        value = value.isoformat()
    if ty == "tuple" and isinstance(value, tuple):
        value = list(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as e:
        raise chorus.InvalidInput(f"the value of a {ty} entry is not JSON: {e}") from None


def _decode(ty: str, raw: str) -> Any:
    """An entry's value from its stored text (empty: the type's default)."""
    if raw == "":
        return {
            "bool": False,
            "int": 0,
            "float": 0.0,
            "string": "",
            "text": "",
            "null": None,
            "tuple": (),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        }.get(ty)
    value = json.loads(raw)
    if ty == "tuple" and isinstance(value, list):
        return tuple(value)
    return value


class Location:
    """A directory that metadata is about."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = os.path.abspath(os.fspath(path))
        self.children: List["Entry"] = []

    @property
    def location(self) -> str:
        """The location's key part (its path relative to the root)."""
        return _location_of(self.path)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def __repr__(self) -> str:
        return f"Location({self.path!r})"


class Entry:
    """One entry of a location: a value, or a group (``dict``/``list``) of
    entries. ``Entry('frames.int', value=240, parent=location)``; the suffix
    may be left out when the value says the type."""

    def __init__(
        self,
        path: str,
        value: Any = None,
        parent: Union[None, Location, "Entry"] = None,
        data: Any = None,
    ):
        name, suffix = _split_name(path)
        if data is not None:
            value = data
        self.name = name
        self.value = value
        self.type = suffix or (_infer(value) if value is not None else None)
        self.parent = parent
        self.children: List[Entry] = []
        if parent is not None:
            parent.children.append(self)
        if self.type in GROUP_TYPES and value is not None:
            # A group's value becomes its children: a dict's by key, a
            # list's by position ("0", "1", ...).
            if isinstance(value, dict):
                children = [(str(k), v) for k, v in value.items()]
            elif isinstance(value, (list, tuple)):
                children = [(str(i), v) for i, v in enumerate(value)]
            else:
                raise chorus.InvalidInput(
                    f"entry {name!r} is a {self.type} group: give it a dict or a list of values, "
                    f"not a {type(value).__name__}"
                )
            for k, v in children:
                Entry(k, value=v, parent=self)
            self.value = None

    @property
    def location(self) -> Location:
        node: Any = self.parent
        while isinstance(node, Entry):
            node = node.parent
        if not isinstance(node, Location):
            raise chorus.InvalidInput(
                f"entry {self.name!r} has no Location: give it parent=om.Location(path) "
                "or a group entry that has one"
            )
        return node

    @property
    def names(self) -> List[str]:
        """Group names from the location down to this entry's name."""
        out = [self.name]
        node: Any = self.parent
        while isinstance(node, Entry):
            out.append(node.name)
            node = node.parent
        return list(reversed(out))

    @property
    def data(self) -> Any:
        """Open Metadata's other name for ``value``."""
        return self.value

    @data.setter
    def data(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        suffix = f".{self.type}" if self.type else ""
        return f"Entry({self.name + suffix!r}, value={self.value!r})"


Dataset = Entry


@dataclass(frozen=True)
class Snapshot:
    """One earlier value of an entry, from its history (newest first)."""

    stamp: str
    user: str
    type: str
    value: Any


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return "unknown"


def _plan(entry: Entry, out: List[Tuple[List[str], str, str]]) -> None:
    """The writes of an entry and its children, every value checked and
    encoded before the first is written."""
    ty = entry.type or ("dict" if entry.children else None)
    if ty is None:
        raise chorus.InvalidInput(
            f"entry {entry.name!r} has no type: name it with a suffix ({', '.join(VALUE_TYPES)}) or give it a value"
        )
    raw = "" if ty in GROUP_TYPES else _encode(ty, entry.value)
    out.append((entry.names, ty, raw))
    for child in entry.children:
        _plan(child, out)


def _write_all(store: "chorus.Store", fp: str, loc: str, entries: List[Entry]) -> None:
    planned: List[Tuple[List[str], str, str]] = []
    for entry in entries:
        _plan(entry, planned)
    user = _user()
    for names, ty, raw in planned:
        _chorus.om_write(store, fp, loc, names, ty, raw, user)


def commit(entry: Union[Entry, Location]) -> None:
    """Writes an entry (a group with its children; a location with all its
    entries) into the store, durable on local disk when it returns. Like
    Open Metadata, an overwritten value first goes to the entry's history,
    and a value whose type changes goes to the trash. Every value is
    checked before the first is written; each entry is then its own
    commit (a store failure part way leaves the earlier ones)."""
    store = _store()
    fp = _config["full_prefix"]
    if isinstance(entry, Location):
        _write_all(store, fp, entry.location, entry.children)
        return
    if not isinstance(entry, Entry):
        raise chorus.InvalidInput(f"commit takes an Entry or a Location, not {type(entry).__name__}")
    _write_all(store, fp, entry.location.location, [entry])


flush = commit


def push(wait: bool = True, timeout: float = 60.0) -> None:
    """Hands the stage to its push daemon (``chorus stage``) now, instead
    of after its quiet period. With ``wait``, returns once the upstream
    acknowledged everything written before the call; raises
    :class:`chorus.NotFound` when no daemon runs on the stage directory,
    :class:`chorus.StorageError` when the push failed, and
    :class:`chorus.Busy` when it is still pending after ``timeout``
    seconds (the daemon pushes it anyway)."""
    store = _store()
    request = _chorus.stage_push(store)
    deadline = time.monotonic() + timeout
    while True:
        state, message = _chorus.stage_push_status(store, request)
        if state == "done":
            return
        if state == "no_daemon":
            raise chorus.error_for("not_found", message)
        if state == "failed":
            raise chorus.error_for("storage", message)
        if not wait:
            return
        if time.monotonic() >= deadline:
            raise chorus.error_for(
                "busy",
                f"the stage daemon has not pushed yet after {timeout:g} s: it will push "
                "when the upstream answers; `chorus stage status` shows why it waits",
            )
        time.sleep(0.05)


def pull(entry: Entry, inherit: bool = False) -> Entry:
    """Reads the entry's value (and type) from the store into it."""
    found = _chorus.om_read(_store(), _config["full_prefix"], entry.location.location, entry.names, inherit)
    if found is None:
        raise chorus.error_for("not_found", f"{'/'.join(entry.names)} has no value at {entry.location.path}")
    ty, raw, _where = found
    entry.type = ty
    entry.value = None if ty in GROUP_TYPES else _decode(ty, raw)
    return entry


def read(path: Union[str, os.PathLike], name: Optional[str] = None, inherit: bool = False) -> Any:
    """The value of entry ``name`` (``"group/name"`` for a nested one; a
    suffix is ignored, as in Open Metadata) at directory ``path``; with
    ``inherit``, the nearest parent directory's value when ``path`` has
    none. Without ``name``, every top-level entry as a ``dict``. ``None``
    when absent."""
    store = _store()
    fp = _config["full_prefix"]
    loc = _location_of(path)
    if name is None:
        return {n: read(path, n) for n, _ty in _chorus.om_list(store, fp, loc, [])}
    names = [_split_name(part)[0] for part in name.split("/")]
    found = _chorus.om_read(store, fp, loc, names, inherit)
    if found is None:
        return None
    ty, raw, _where = found
    if ty in GROUP_TYPES:
        return {n: read(path, "/".join(names + [n])) for n, _t in _chorus.om_list(store, fp, loc, names)}
    return _decode(ty, raw)


def write(path: Union[str, os.PathLike], name: str, value: Any) -> None:
    """Writes ``value`` as entry ``name`` (``"name.suffix"`` names the type;
    ``"group/name"`` nests) at directory ``path``."""
    parts = name.split("/")
    parent: Union[Location, Entry] = Location(path)
    for group in parts[:-1]:
        gname, gsuffix = _split_name(group)
        parent = Entry(f"{gname}.{gsuffix or 'dict'}", parent=parent)
    entry = Entry(parts[-1], value=value, parent=parent)
    if entry.type is None:
        entry.type = _infer(value)  # None: a null entry
    _write_all(_store(), _config["full_prefix"], entry.location.location, [entry])


def history(entry: Entry) -> List[Snapshot]:
    """The entry's earlier values, newest first."""
    rows = _chorus.om_history(_store(), _config["full_prefix"], entry.location.location, entry.names)
    return [Snapshot(stamp, user, ty, _decode(ty, raw)) for stamp, user, ty, raw in rows]


def restore(entry: Entry, snapshot: Union[Snapshot, str]) -> None:
    """Writes an earlier value back (the current one goes to history)."""
    stamp = snapshot.stamp if isinstance(snapshot, Snapshot) else snapshot
    _chorus.om_restore(
        _store(), _config["full_prefix"], entry.location.location, entry.names, stamp, _user()
    )


def remove(entry: Entry, permanent: bool = False) -> bool:
    """Removes the entry (to the trash unless ``permanent``); False when it
    was absent."""
    return _chorus.om_delete(
        _store(), _config["full_prefix"], entry.location.location, entry.names, permanent
    )


def import_tree(path: Union[str, os.PathLike], full_prefix: Optional[str] = None, progress=None) -> Dict[str, int]:
    """Imports every ``.meta`` folder under ``path`` (``chorus om import``):
    the whole tree is checked first, so a bad tree imports nothing.
    ``progress(phase, done, total)`` is called every few hundred entries
    (``phase`` ``"scanning"`` or ``"writing"``; ``total`` ``None`` while
    unknown); an exception it raises stops the import and propagates
    (while writing, the commits made so far stay: import again to finish)."""
    return _chorus.om_import(_store(), os.fspath(path), full_prefix or _config["full_prefix"], progress)


def export_tree(
    path: Union[str, os.PathLike], full_prefix: Optional[str] = None, force: bool = False, progress=None
) -> Dict[str, int]:
    """Writes the entries back as ``.meta`` folders under ``path`` (``chorus
    om export``), byte for byte as imported; ``progress`` as for
    :func:`import_tree`."""
    return _chorus.om_export(_store(), os.fspath(path), full_prefix or _config["full_prefix"], force, progress)
