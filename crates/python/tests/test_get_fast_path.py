"""`Store.get`'s fast path: full prefixes remembered by the str object
passed, and the fork check that reads the process id an at-fork hook
keeps instead of asking the kernel on every call."""

import os

import pytest

import chorus


@pytest.fixture
def db(tmp_path):
    with chorus.open(str(tmp_path / "data")) as handle:
        yield handle


def test_each_full_prefix_reads_its_own_keys_past_the_cache(db):
    # More distinct prefixes than the cache keeps, read in turns, each as
    # the same str object every time and as a fresh equal str.
    names = [f"fast/p{i}" for i in range(12)]
    for n in names:
        db.put(n, "k", n)
    for _ in range(3):
        for n in names:
            assert db.get(n, "k") == n.encode()
            fresh = "".join(list(n))
            assert fresh is not n
            assert db.get(fresh, "k") == n.encode()


def test_a_bad_full_prefix_is_refused_every_time(db):
    bad = "no-slash"
    for _ in range(3):
        with pytest.raises(chorus.InvalidInput):
            db.get(bad, "k")
    with pytest.raises(chorus.InvalidInput):
        db.get("/", "k")
    with pytest.raises(chorus.InvalidInput):
        db.get(b"fast/bytes", "k")


def test_a_str_subclass_full_prefix_reads_the_same_key(db):
    class Name(str):
        pass

    db.put("fast/sub", "k", "v")
    name = Name("fast/sub")
    assert db.get(name, "k") == b"v"
    assert db.get(name, "k") == b"v"


def test_a_cached_full_prefix_reads_another_stores_keys_right(tmp_path):
    fp = "fast/shared"
    with chorus.open(str(tmp_path / "a")) as a, chorus.open(str(tmp_path / "b")) as b:
        a.put(fp, "k", "from a")
        b.put(fp, "k", "from b")
        assert a.get(fp, "k") == b"from a"
        assert b.get(fp, "k") == b"from b"


def _in_child(body):
    """Runs `body()` in a forked child; its exit code: 0 when it returned
    True, 1 when False, 2 when it raised."""
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if body() else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_forked_child_is_refused_the_parents_handle_but_opens_its_own(db):
    path = db.path
    db.put("fast/fork", "k", "parent")
    assert db.get("fast/fork", "k") == b"parent"

    def refused():
        try:
            db.get("fast/fork", "k")
        except chorus.InvalidInput as e:
            return "fork" in str(e)
        return False

    assert _in_child(refused) == 0

    def own_handle():
        with chorus.open(path) as mine:
            return mine.get("fast/fork", "k") == b"parent"

    assert _in_child(own_handle) == 0

    def grandchild_refused():
        with chorus.open(path) as mine:
            mine.get("fast/fork", "k")

            def inner():
                try:
                    mine.get("fast/fork", "k")
                except chorus.InvalidInput:
                    return True
                return False

            return _in_child(inner) == 0 and mine.get("fast/fork", "k") == b"parent"

    assert _in_child(grandchild_refused) == 0
    # The parent's handle still works after its children came and went.
    assert db.get("fast/fork", "k") == b"parent"
