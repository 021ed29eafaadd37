"""The values every Chorus handle returns, embedded or remote.

They mirror the JSON the HTTP API and the ZeroMQ broker send (see
``openapi.json``): a read is its siblings, the context to write back with,
and whether the key is deleted; a watched change is one key of one commit.
Both handles build the same objects, so code written against one runs
against the other.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional


def _bytes_of(text: str, encoding: Optional[str]) -> bytes:
    if encoding == "base64":
        return base64.b64decode(text)
    return text.encode("utf-8")


@dataclass(frozen=True)
class Sibling:
    """One value of a key: its bytes (``None`` for a tombstone), the
    writer's hybrid timestamp in milliseconds and the writing node's id."""

    value: Optional[bytes]
    timestamp: int
    node: str

    @property
    def deleted(self) -> bool:
        """True for a tombstone (a delete that is a sibling of values)."""
        return self.value is None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Sibling":
        """From the HTTP API's value object."""
        value = None
        if not d.get("tombstone"):
            value = _bytes_of(d.get("value", ""), d.get("encoding"))
        return cls(value=value, timestamp=int(d["timestamp"]), node=str(d["node"]))


@dataclass(frozen=True)
class Read:
    """What a read found: every sibling, the context that supersedes
    exactly them, and whether the key is deleted (or absent)."""

    siblings: List[Sibling] = field(default_factory=list)
    context: str = ""
    deleted: bool = True

    @property
    def values(self) -> List[bytes]:
        """The live values (tombstone siblings left out)."""
        return [s.value for s in self.siblings if s.value is not None]

    @property
    def value(self) -> Optional[bytes]:
        """The one live value; ``None`` when the key is deleted or absent.

        Raises :class:`chorus.Conflict` when there are several siblings:
        settle them with a resolver, or write with this read's context."""
        values = self.values
        if len(values) > 1:
            from chorus._chorus import Conflict

            raise Conflict(
                f"the key holds {len(values)} siblings: read them with `.values`, "
                "or settle them with resolver='lww' or a function"
            )
        return values[0] if values else None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Read":
        """From the HTTP API's read object."""
        return cls(
            siblings=[Sibling.from_json(v) for v in d.get("values", [])],
            context=str(d.get("context", "")),
            deleted=bool(d.get("tombstone", False)),
        )


@dataclass(frozen=True)
class Item:
    """One key visited by ``iter``: its full prefix, key and read."""

    full_prefix: str
    key: bytes
    read: Read

    @property
    def value(self) -> Optional[bytes]:
        """``read.value``."""
        return self.read.value


@dataclass(frozen=True)
class Change:
    """One key of one commit, as a watch reports it.

    ``id`` is where to resume: ``watch(..., from_=change.id)`` reports the
    changes after this one, each once. ``record`` names a document's
    revision or an operation log's record (the key is then the document's
    or log's). ``removed`` is true once a collected tombstone left the
    store; otherwise ``read`` holds the key's values after the commit."""

    id: str
    seq: int
    full_prefix: str
    key: bytes
    from_peer: bool
    read: Optional[Read]
    record: Optional[str] = None

    @property
    def removed(self) -> bool:
        """True when the key no longer exists at all."""
        return self.read is None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Change":
        """From the HTTP API's event object."""
        read = None if d.get("removed") else Read.from_json(d)
        return cls(
            id=str(d["id"]),
            seq=int(d["seq"]),
            full_prefix=str(d["full_prefix"]),
            key=_bytes_of(d["key"], d.get("key_encoding")),
            from_peer=bool(d.get("from_peer", False)),
            read=read,
            record=d.get("record"),
        )


@dataclass(frozen=True)
class Gap:
    """A watch fell behind compaction: the changes before ``resume`` were
    replaced; read the keys again, then go on (the watch already does)."""

    resume: str
