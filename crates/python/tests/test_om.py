"""Open Metadata over Chorus (chorus.om, `chorus om import|export`), with
real processes: an upstream `chorus serve`, a `chorus stage` daemon, the
seed's example run as written, and `.meta` trees round-tripped byte for
byte."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

import chorus
import chorus.om as om


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def upstream(tmp_path, chorus_bin):
    """A `chorus serve` node: yields its HTTP URL."""
    http, gossip = free_port(), free_port()
    log = open(tmp_path / "upstream.log", "w")
    proc = subprocess.Popen(
        [chorus_bin, "--dir", str(tmp_path / "upstream"), "serve", "--insecure",
         "--http", f"127.0.0.1:{http}", "--gossip", f"127.0.0.1:{gossip}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{http}"

    def healthy():
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_for("the upstream node", healthy)
        yield url
    finally:
        proc.kill()
        proc.wait()
        log.close()


@pytest.fixture
def stage(tmp_path, chorus_bin, upstream):
    """A stage directory with its push daemon (a quiet period of an hour,
    so only om.push() sends anything soon)."""
    stage_dir = tmp_path / "stage"
    log = open(tmp_path / "stage.log", "w")
    proc = subprocess.Popen(
        [chorus_bin, "stage", "--dir", str(stage_dir), "--upstream", upstream, "--quiet", "1h"],
        stdout=log, stderr=subprocess.STDOUT,
    )

    def running():
        r = subprocess.run([chorus_bin, "stage", "--dir", str(stage_dir), "status"],
                           capture_output=True)
        return r.returncode == 0 and b"not running" not in r.stdout + r.stderr

    try:
        wait_for("the stage daemon", running)
        yield str(stage_dir)
    finally:
        proc.kill()
        proc.wait()
        log.close()


def upstream_value(url, full_prefix, key):
    quoted = urllib.parse.quote(key, safe="")
    try:
        with urllib.request.urlopen(f"{url}/v1/kv/{full_prefix}/{quoted}", timeout=5) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise
    return [v.get("value") for v in body["values"]]


SEED_EXAMPLE = """
import chorus.om as om
location = om.Location('/server/location')
dataset = om.Dataset('new_data.string', data='a value', parent=location)
om.commit(dataset)
om.push()
"""


def test_the_seeds_example_reaches_the_upstream(stage, upstream, tmp_path):
    env = dict(os.environ, CHORUS_STAGE_DIR=stage, HOME=str(tmp_path))
    # Nothing is upstream before the example runs.
    assert upstream_value(upstream, "om/default", "server/location/.meta/new_data") is None
    ran = subprocess.run([sys.executable, "-c", SEED_EXAMPLE], env=env,
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    # om.push() returned: the upstream already holds it (no waiting here).
    values = upstream_value(upstream, "om/default", "server/location/.meta/new_data")
    assert values is not None and len(values) == 1
    stored = json.loads(values[0])
    assert stored == {"type": "string", "raw": '"a value"'}


def test_push_without_a_daemon_says_how_to_start_one(tmp_path, monkeypatch):
    monkeypatch.setenv("CHORUS_STAGE_DIR", str(tmp_path / "lonely-stage"))
    om.configure(store=str(tmp_path / "lonely-stage"))
    try:
        om.write("/server/location", "frames.int", 24)
        with pytest.raises(chorus.NotFound) as e:
            om.push()
        assert "no stage daemon is running" in str(e.value)
        assert "chorus stage --upstream" in str(e.value)
        assert e.value.exit_code == 1
    finally:
        om.configure(store=str(tmp_path / "other"))


# --- the entry API ------------------------------------------------------------


@pytest.fixture
def omdb(tmp_path):
    om.configure(store=str(tmp_path / "om-store"), full_prefix="om/test", root="/")
    yield om._store()
    om.configure(store=str(tmp_path / "closed"), full_prefix="om/default", root="/")


def test_values_keep_their_open_metadata_types(omdb):
    loc = om.Location("/show/shot1")
    for name, value in [("flag.bool", True), ("frames.int", 240), ("fps.float", 23.976),
                        ("title.string", "Shot 1"), ("notes.text", "long\ntext"),
                        ("nothing.null", None), ("range.tuple", (1, 240))]:
        om.commit(om.Entry(name, value=value, parent=loc))
    assert om.read("/show/shot1", "frames") == 240
    assert om.read("/show/shot1", "frames.string") == 240  # the suffix is ignored on lookup
    assert om.read("/show/shot1", "range") == (1, 240)
    assert om.read("/show/shot1", "fps") == pytest.approx(23.976)
    assert om.read("/show/shot1", "nothing") is None
    assert om.read("/show/shot1", "missing") is None
    assert set(om.read("/show/shot1")) == {"flag", "frames", "fps", "title", "notes", "nothing", "range"}


def test_groups_nest(omdb):
    loc = om.Location("/show/shot2")
    render = om.Entry("render.dict", parent=loc)
    om.Entry("frames.int", value=100, parent=render)
    passes = om.Entry("passes.list", parent=render)
    om.Entry("beauty.string", value="yes", parent=passes)
    om.commit(loc)
    assert om.read("/show/shot2", "render") == {"frames": 100, "passes": {"beauty": "yes"}}
    assert om.read("/show/shot2", "render/passes/beauty") == "yes"


def test_history_and_restore(omdb):
    om.write("/show/shot3", "frames.int", 10)
    time.sleep(1.1)  # history snapshots are named by the second, as in Open Metadata
    om.write("/show/shot3", "frames.int", 11)
    entry = om.Entry("frames", parent=om.Location("/show/shot3"))
    snaps = om.history(entry)
    assert [s.value for s in snaps] == [10]
    assert snaps[0].type == "int" and snaps[0].user
    om.restore(entry, snaps[0])
    assert om.read("/show/shot3", "frames") == 10
    assert om.pull(entry).value == 10


def test_inheritance_from_parent_locations(omdb):
    om.write("/show", "fps.float", 24.0)
    om.write("/show/seq1/shot4", "frames.int", 5)
    assert om.read("/show/seq1/shot4", "fps") is None
    assert om.read("/show/seq1/shot4", "fps", inherit=True) == 24.0
    om.write("/show/seq1", "fps.float", 25.0)
    assert om.read("/show/seq1/shot4", "fps", inherit=True) == 25.0  # the nearest wins


def test_bad_entries_write_nothing(omdb):
    before = list(omdb.iter("om/test"))
    with pytest.raises(chorus.InvalidInput):
        om.write("/show/x", "when.int", object())
    with pytest.raises(chorus.InvalidInput):
        om.commit(om.Entry("untyped"))  # no location, no type
    with pytest.raises(chorus.InvalidInput):
        om.configure(full_prefix="no-slash")
    assert list(omdb.iter("om/test")) == before


# --- .meta trees in and out ----------------------------------------------------


def make_tree(root):
    """A tree with every type, nested groups, empty files, an empty group,
    locations at several depths, a history snapshot and a trash entry."""
    files = {
        ".meta/title.string": '"The Show"',
        ".meta/fps.float": "24.0",
        "seq1/.meta/active.bool": "true",
        "seq1/.meta/count.int": "12",
        "seq1/.meta/empty.int": "",
        "seq1/.meta/notes.text": '"line one\\nline two"',
        "seq1/.meta/nothing.null": "null",
        "seq1/.meta/range.tuple": "[1, 240]",
        "seq1/.meta/created.date": '"2014-03-01T10:00:00"',
        "seq1/shot1/.meta/render.dict/frames.int": "240",
        "seq1/shot1/.meta/render.dict/passes.list/beauty.string": '"yes"',
        "seq1/shot1/.meta/render.dict/blank.string": "",
        "seq1/shot1/.meta/frames.int": "241",
        "seq1/shot1/.meta/.history/frames&20140301-100000/user.string": '"marcus"',
        "seq1/shot1/.meta/.history/frames&20140301-100000/value.int": "240",
        "seq1/shot1/.meta/.trash/old.string": '"gone"',
        "seq2/deep/er/.meta/x.int": "  7 \n",
    }
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    (root / "seq1/shot1/.meta/render.dict/empty.dict").mkdir()
    (root / "seq3/.meta").mkdir(parents=True)  # an empty .meta folder
    (root / "seq1/not-metadata.txt").write_text("left alone")
    return files


def meta_listing(root):
    """Every file (with its bytes) and folder under every .meta folder."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if ".meta" not in rel.split(os.sep):
            continue
        out[rel + "/"] = None
        for f in filenames:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.join(rel, f)] = fh.read()
    return out


def test_import_then_export_is_byte_identical(omdb, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    report = om.import_tree(src)
    assert report["entries"] > 0 and report["written"] > 0
    again = om.import_tree(src)
    assert again["written"] == 0  # idempotent
    out = tmp_path / "out"
    om.export_tree(out)
    assert meta_listing(out) == meta_listing(src)
    assert not (out / "seq1/not-metadata.txt").exists()  # only .meta folders travel


def test_python_and_the_command_line_share_the_layout(omdb, tmp_path, chorus_bin):
    src = tmp_path / "src"
    make_tree(src)
    store_dir = tmp_path / "cli-store"
    subprocess.run([chorus_bin, "--dir", str(store_dir), "init"], check=True, capture_output=True)
    ran = subprocess.run([chorus_bin, "--dir", str(store_dir), "om", "import", str(src),
                          "--into", "om/test"], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    # Read what the command imported with the Python API.
    om.configure(store=str(store_dir), full_prefix="om/test", root=str(src))
    assert om.read(src / "seq1/shot1", "render/frames") == 240
    assert om.read(src / "seq1", "count") == 12
    assert om.read(src / "seq1/shot1", "count", inherit=True) == 12
    om.write(src / "seq1", "count.int", 13)
    om._store().close()
    out = tmp_path / "out"
    ran = subprocess.run([chorus_bin, "--dir", str(store_dir), "om", "export", str(out),
                          "--from", "om/test"], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert (out / "seq1/.meta/count.int").read_text() == "13"
    # The overwritten value went to history, as Open Metadata does it.
    history = list((out / "seq1/.meta/.history").iterdir())
    assert len(history) == 1 and history[0].name.startswith("count&")
    assert (history[0] / "value.int").read_text() == "12"


@pytest.mark.parametrize(
    "files, fragments",
    [
        ({"a/.meta/x.int": "1", "a/.meta/x.string": '"1"'}, ["x.int", "x.string"]),
        ({"a/.meta/x.int": "{not json"}, ["x.int", "JSON"]),
        ({"a/.meta/x.weird": "1"}, ["x.weird", "bool"]),
    ],
    ids=["duplicate names", "invalid JSON", "unknown suffix"],
)
def test_bad_trees_import_nothing(omdb, tmp_path, files, fragments, chorus_bin):
    src = tmp_path / "bad"
    good = {"ok/.meta/fine.int": "1"}  # a good location beside the bad one
    for rel, content in {**good, **files}.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    with pytest.raises(chorus.InvalidInput) as e:
        om.import_tree(src)
    for fragment in fragments:
        assert fragment in str(e.value)
    assert list(omdb.iter("om/test", tombstones=True)) == []
    # The command line says the same and exits 2.
    subprocess.run([chorus_bin, "--dir", str(tmp_path / "cli"), "init"], check=True, capture_output=True)
    ran = subprocess.run([chorus_bin, "--dir", str(tmp_path / "cli"), "om", "import", str(src)],
                         capture_output=True, text=True)
    assert ran.returncode == 2
    for fragment in fragments:
        assert fragment in ran.stderr


def test_a_progress_callback_that_raises_stops_the_import(omdb, tmp_path):
    src = tmp_path / "many"
    for i in range(600):
        loc = src / f"shot{i:03}" / ".meta"
        loc.mkdir(parents=True)
        (loc / "frames.int").write_text(str(i))
    seen = []

    def progress(phase, done, total):
        seen.append((phase, done, total))
        raise KeyboardInterrupt  # what Ctrl-C raises in a callback

    with pytest.raises(KeyboardInterrupt):
        om.import_tree(src, progress=progress)
    assert len(seen) == 1 and seen[0][0] == "scanning"
    assert list(omdb.iter("om/test", tombstones=True)) == []  # stopped while checking

    calls = []
    report = om.import_tree(src, progress=lambda *a: calls.append(a))
    assert report["entries"] >= 600 and calls[-1][0] == "writing"
    assert calls[-1][1] == calls[-1][2]  # the last report says all done
