#!/usr/bin/env python3
"""Schemathesis against a running Chorus node (driven by schemathesis.rs).

Run as a script it:

1. installs Schemathesis (4.x) and openapi-spec-validator with pip when
   they are missing, and fails loudly when it cannot;
2. checks that the OpenAPI document is valid and that the node serves it
   unchanged at /openapi.json;
3. reads from the node a few values only it can make (a context, a feed
   cursor, an encoded object), so that generated requests can carry real
   ones where the document names an opaque format;
4. runs `schemathesis run --checks all` on every operation, bounded in
   examples and in time, and exits with its status (non-zero on any
   failure), its output printed;
5. sends requests the fuzzer does not make or cannot judge (PROBES: a
   method a route lacks, bodies and URIs over the limits, bytes that are
   not UTF-8, parameters given twice) and fails when an answer is not a
   JSON {code, message} with the expected status.

Imported by Schemathesis (SCHEMATHESIS_HOOKS=schemathesis_run) it registers
the strategies of the document's opaque formats and the hooks below.

    python3 crates/node/tests/schemathesis_run.py --url http://127.0.0.1:7800 \
        --schema crates/node/src/openapi.json --work /tmp/st
"""

import argparse
import base64
import importlib
import json
import os
import site
import subprocess
import sys
import time
import urllib.error
import urllib.request

# (module, distribution, oldest version: the options used here are
# Schemathesis 4.32's).
PACKAGES = [("schemathesis", "schemathesis", (4, 32)), ("openapi_spec_validator", "openapi-spec-validator", (0, 7))]
# Where the harvested values travel from the driver to the hooks.
VALUES_ENV = "CHORUS_SCHEMATHESIS_VALUES"
# A placeholder no Chorus node listens on (the document's join example).
HARMLESS_PEER = "127.0.0.1:1"


def log(*args):
    print("schemathesis_run:", *args, flush=True)


def installed(module, distribution, oldest):
    """Whether `module` imports, from a version no older than `oldest`."""
    from importlib import metadata

    try:
        importlib.import_module(module)
        version = metadata.version(distribution)
    except (ImportError, metadata.PackageNotFoundError):
        return False
    numbers = []
    for part in version.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        numbers.append(int(digits or 0))
    return tuple(numbers) >= oldest


def ensure_packages():
    """Imports or installs each package; exits non-zero when one cannot be had."""
    for module, distribution, oldest in PACKAGES:
        if installed(module, distribution, oldest):
            continue
        requirement = f"{distribution}>={'.'.join(map(str, oldest))},<{oldest[0] + 1}"
        log(f"installing {requirement}")
        for extra in ([], ["--user"], ["--break-system-packages"]):
            done = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--upgrade", *extra, requirement],
                stdin=subprocess.DEVNULL,
            )
            if done.returncode == 0:
                break
        importlib.invalidate_caches()
        user_site = site.getusersitepackages()
        if os.path.isdir(user_site) and user_site not in sys.path:
            site.addsitedir(user_site)
        if not installed(module, distribution, oldest):
            log(
                f"FAILED: {requirement} is missing and could not be installed: "
                "the test needs it, and pip access to PyPI to install it"
            )
            sys.exit(3)


def http(method, url, body=None, headers=None):
    """(status, headers, body bytes) of one request."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()
    except OSError as e:
        log(f"FAILED: {method} {url}: {e}")
        sys.exit(6)


def validate_document(schema_path, url):
    from openapi_spec_validator import validate
    from openapi_spec_validator.readers import read_from_filename

    document, _ = read_from_filename(schema_path)
    validate(document)
    log(f"{schema_path} is valid OpenAPI {document['openapi']}")
    status, _, served = http("GET", f"{url}/openapi.json")
    if status != 200 or json.loads(served) != document:
        log(f"FAILED: {url}/openapi.json (status {status}) is not {schema_path}")
        sys.exit(4)


def harvest(url):
    """Values only the node makes: contexts, feed cursors, encoded objects."""

    def pull_cursor():
        status, _, body = http("GET", f"{url}/v1/sync/pull?prefix=schemathesis-seed")
        if status != 200:
            log(f"FAILED: a pull to harvest values answered {status} {body!r}")
            sys.exit(5)
        return json.loads(body)

    key = f"{url}/v1/kv/schemathesis-seed/values/k"
    # The earliest first: a watch from it replays the seeds at once.
    cursors = [pull_cursor()["cursor"]]
    for value in (b"one", b"two"):
        status, _, body = http("PUT", key, value)
        if status != 200:
            log(f"FAILED: seeding {key}: {status} {body!r}")
            sys.exit(5)
        cursors.append(pull_cursor()["cursor"])
    status, headers, _ = http("GET", key)
    context = headers.get("X-Chorus-Context")
    _, _, health = http("GET", f"{url}/health")
    node = json.loads(health)["node"]
    objects = [o["object"] for o in pull_cursor()["objects"]]
    if status != 200 or not context or not objects:
        log(f"FAILED: harvesting values: {status}, context {context!r}, objects {objects!r}")
        sys.exit(5)
    return {"contexts": [context], "cursors": cursors, "objects": objects, "node": node}


# Requests the fuzzer does not make, or whose answers it cannot judge
# (a method no operation has, a body over the limit, a URI over the limit,
# bytes that are not UTF-8): each must get one of the statuses listed and,
# like every error, a JSON {code, message}. (method, path, body, headers,
# statuses)
PROBES = [
    ("PATCH", "/v1/kv/app/cfg/k", None, {}, {405}),
    ("POST", "/v1/kv/app/cfg", None, {}, {405}),
    ("PUT", "/v1/hash/app", None, {}, {405}),
    ("DELETE", "/v1/watch", None, {}, {405}),
    ("PUT", "/v1/kv/app/cfg/k", b"x" * ((1 << 20) + 1), {}, {413}),
    ("POST", "/v1/docs/users", b" " * ((1 << 20) + 1), {"Content-Type": "application/json"}, {413}),
    ("POST", "/v1/sync/push", b" " * ((16 << 20) + 1), {"Content-Type": "application/json"}, {413}),
    ("POST", "/v1/cluster/join", b" " * ((1 << 20) + 1), {"Content-Type": "application/json"}, {413}),
    ("POST", "/v1/ops/app/cfg/p", b" " * ((1 << 20) + 1), {"Content-Type": "application/json"}, {413}),
    ("PUT", "/v1/docs/users/alice", b" " * ((1 << 20) + 1), {"Content-Type": "application/json"}, {413}),
    # Over the node's own limit of 8 KiB. Beyond 64 KiB, and beyond 100
    # header fields, hyper answers 414 or 431 itself, with an empty body,
    # before the request reaches Chorus: a known limit (see the closing
    # note of issue 15), not probed here.
    ("GET", "/v1/kv/app/cfg/" + "k" * 9000, None, {}, {414}),
    # A key over max_key_bytes (4096) is bad input for a read as for a write.
    ("GET", "/v1/kv/app/cfg/" + "k" * 4097, None, {}, {400}),
    ("GET", "/v1/kv/app/cfg/%FF", None, {}, {400}),
    ("GET", "/v1/kv/%FF/cfg/k", None, {}, {400}),
    ("GET", "/v1/docs/users/%FF", None, {}, {400}),
    ("GET", "/v1/docs/%FF", None, {}, {400}),
    ("GET", "/v1/ops/app/cfg/%FF", None, {}, {400}),
    ("GET", "/v1/hash/%FF", None, {}, {400}),
    ("GET", "/v1/kv/app/cfg/k?resolve=lww&resolve=lww", None, {}, {400}),
    ("GET", "/v1/kv/app/cfg/k?allow_put=maybe", None, {}, {400}),
    ("GET", "/v1/docs/users/alice?conflicts=yes", None, {}, {400}),
    ("GET", "/v1/docs/users/alice/conflicts?limit=1&limit=2", None, {}, {400}),
    ("GET", "/v1/sync/pull?prefix=app&cursor=1-0-0&cursor=1-0-0", None, {}, {400}),
    ("GET", "/v1/docs/users/alice?rev=1-a&rev=1-a", None, {}, {400}),
    ("GET", "/v1/ops/app/cfg/p?log=1", None, {}, {400}),
    ("POST", "/v1/cluster/join", b'{"peer": "127.0.0.1:1"}', {"Content-Type": "text/plain"}, {400, 415}),
    # A node id is 32 hex digits: not padded, not signed.
    ("POST", "/v1/sync/push", b'{"node": " 0123456789abcdef0123456789abcdef ", "objects": []}', {}, {400}),
    ("POST", "/v1/sync/push", b'{"node": "+123456789abcdef0123456789abcdef", "objects": []}', {}, {400}),
    ("GET", "/nowhere", None, {}, {404}),
]


def probe(url, method, path, body, headers, statuses):
    """None when the answer keeps the contract, else what is wrong."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        status, answer = response.status, response.read()
        content_type = response.getheader("Content-Type") or ""
        allow = response.getheader("Allow")
    except OSError as e:
        return f"no answer ({e})"
    finally:
        connection.close()
    wrong = []
    if status not in statuses:
        wrong.append(f"status {status}, expected {' or '.join(map(str, sorted(statuses)))}")
    try:
        shape = json.loads(answer)
        keeps = (
            isinstance(shape, dict)
            and set(shape) == {"code", "message"}
            and all(isinstance(v, str) for v in shape.values())
        )
    except ValueError:
        keeps = False
    if not content_type.startswith("application/json") or not keeps:
        wrong.append(f"body {answer[:200]!r} ({content_type or 'no Content-Type'}), expected a JSON {{code, message}}")
    if status == 405 and not allow:
        wrong.append("no Allow header")
    return f"{status}: " + "; ".join(wrong) if wrong else None


def run_probes(url):
    """Runs every probe; returns how many failed."""
    failed = 0
    for method, path, body, headers, statuses in PROBES:
        wrong = probe(url, method, path, body, headers, statuses)
        shown = path if len(path) < 120 else path[:60] + f"...({len(path)} bytes)"
        if body is None:
            sized = ""
        elif len(body) > 200:
            sized = f" with a {len(body)}-byte body"
        else:
            sized = f" with {body.decode()}"
        if wrong:
            failed += 1
            log(f"PROBE FAILED: {method} {shown}{sized}: {wrong}")
        else:
            log(f"probe ok: {method} {shown}{sized}")
    return failed


# Per-operation settings (Schemathesis' configuration file).
CONFIG = """
# A request the schema forbids may also be refused for its size: a path
# over the node's 8 KiB limit (414) or a body over 1 MiB (413).
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 409, 413, 414, 422]

# An endless text/event-stream: read up to one event, or what came within
# a second (a watch from now is silent until something changes).
[[operations]]
include-path = "/v1/watch"
request-timeout = 1
max-stream-events = 1
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the node's HTTP API, http://HOST:PORT")
    parser.add_argument("--schema", required=True, help="the OpenAPI document (crates/node/src/openapi.json)")
    parser.add_argument("--work", required=True, help="a directory for reports")
    parser.add_argument("--budget-secs", type=int, default=180, help="wall-clock bound of the fuzzing run")
    parser.add_argument("--probes-only", action="store_true", help="only the contract probes (no install, no fuzzing)")
    args = parser.parse_args()
    started = time.monotonic()
    if args.probes_only:
        failed_probes = run_probes(args.url)
        log(f"{failed_probes} of {len(PROBES)} contract probes failed")
        sys.exit(1 if failed_probes else 0)

    ensure_packages()
    import schemathesis

    log(f"schemathesis {schemathesis.__version__}")
    validate_document(args.schema, args.url)
    values = harvest(args.url)

    examples = os.environ.get("CHORUS_SCHEMATHESIS_EXAMPLES", "25")
    seed = os.environ.get("CHORUS_SCHEMATHESIS_SEED", "1")
    env = dict(os.environ)
    env[VALUES_ENV] = json.dumps(values)
    env["SCHEMATHESIS_HOOKS"] = "schemathesis_run"
    # Imported from the source tree: leave no __pycache__ there.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    config = os.path.join(args.work, "schemathesis.toml")
    with open(config, "w") as f:
        f.write(CONFIG)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        config,
        "--no-color",
        "run",
        f"{args.url}/openapi.json",
        "--checks",
        "all",
        # The only required header in the document is the bearer token of
        # the /v1/auth routes, and the node under test runs with auth off,
        # where those routes answer 404 (auth is off) before reading any
        # header: "a missing Authorization header gets 401" holds only with
        # --auth. (In 4.32 a per-operation `enabled = false` for it in the
        # configuration file did not take, and for Authorization the check
        # insists on 401 whatever statuses it is given.)
        "--exclude-checks",
        "missing_required_header",
        "--max-examples",
        examples,
        "--seed",
        seed,
        # One worker: Hypothesis describes strategies with ast.parse, which
        # CPython 3.11 does not allow from several threads at once
        # ("AST constructor recursion depth mismatch").
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--continue-on-failure",
    ]
    budget = max(30, args.budget_secs - int(time.monotonic() - started))
    log("running:", " ".join(command))
    try:
        done = subprocess.run(command, env=env, cwd=args.work, stdin=subprocess.DEVNULL, timeout=budget)
        status = done.returncode
    except subprocess.TimeoutExpired:
        log(f"FAILED: the run took more than {budget} s")
        status = 124
    log(f"schemathesis exited {status} after {time.monotonic() - started:.0f} s in all")
    failed_probes = run_probes(args.url)
    log(f"{failed_probes} of {len(PROBES)} contract probes failed")
    if status == 0 and failed_probes:
        status = 1
    sys.exit(status)


# ----------------------------------------------------------------------
# Hooks: loaded by Schemathesis (SCHEMATHESIS_HOOKS), not by the driver.


def _register_hooks():
    from collections.abc import MutableMapping

    import schemathesis
    from hypothesis import strategies as st

    values = json.loads(os.environ.get(VALUES_ENV, "{}"))

    def after_token(parts):
        sub, key = parts
        raw = sub.encode() + b"\0" + key
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    # Opaque values the server makes: real ones, harvested from the node.
    schemathesis.openapi.format("chorus-context", st.sampled_from(values["contexts"]))
    schemathesis.openapi.format("chorus-cursor", st.sampled_from(values["cursors"]))
    schemathesis.openapi.format("chorus-object", st.sampled_from(values["objects"]))
    # A full pull's page token: base64url(subprefix, a zero byte, key).
    schemathesis.openapi.format(
        "chorus-after",
        st.tuples(
            st.text(st.characters(blacklist_characters="\0/", blacklist_categories=["Cc", "Cs"]), min_size=1),
            st.binary(min_size=1),
        ).map(after_token),
    )

    def valid_after(text):
        """Whether a full pull would read `text` as its after token."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            sub = raw[: raw.index(b"\0")].decode()
        except (ValueError, UnicodeDecodeError):
            return False
        # The server's decoder is strict: no padding, canonical bits.
        return bool(sub) and after_token((sub, raw[len(sub.encode()) + 1 :])) == text

    def positive(case):
        """A valid request as the document words it, in what OpenAPI
        cannot say: opaque values are ones the server made, and parameters
        the document says not to combine are not combined."""
        label = case.operation.label
        query = case.query if isinstance(case.query, MutableMapping) else {}
        headers = case.headers if isinstance(case.headers, MutableMapping) else {}
        if "X-Chorus-Context" in headers and headers["X-Chorus-Context"] not in values["contexts"]:
            headers["X-Chorus-Context"] = values["contexts"][0]
        if "Last-Event-ID" in headers and headers["Last-Event-ID"] not in values["cursors"]:
            headers["Last-Event-ID"] = values["cursors"][0]
        if label == "GET /v1/docs/{store}/{id}" and "rev" in query and query.get("conflicts") in (True, "true"):
            del query["conflicts"]
        if label == "GET /v1/docs/{store}/{id}/conflicts" and "after" in query and "limit" not in query:
            del query["after"]
        if label == "GET /v1/sync/pull":
            if "cursor" in query:
                query.pop("after", None)
                if query["cursor"] not in values["cursors"]:
                    query["cursor"] = values["cursors"][0]
            if "after" in query and not (isinstance(query["after"], str) and valid_after(query["after"])):
                query["after"] = after_token(("x", b"k"))
        if label == "PUT /v1/docs/{store}/{id}" and isinstance(case.body, dict):
            # The body's _id must equal the URL's (not always the raw path
            # parameter here, which links may hold percent-encoded): the
            # URL names the document, so a valid edit may leave it out.
            case.body.pop("_id", None)
        if label == "PUT /v1/channels/{name}" and isinstance(case.body, dict):
            # A channel names members (this node is the only one) and
            # patterns that do not overlap each other.
            case.body["nodes"] = [values["node"]]
            if isinstance(case.body.get("patterns"), list):
                case.body["patterns"] = case.body["patterns"][:1]
        if label in ("POST /v1/channels/{name}/serve", "POST /v1/channels/{name}/leave") and isinstance(case.body, dict) and "node" in case.body:
            case.body["node"] = values["node"]
        if label == "POST /v1/sync/push" and isinstance(case.body, dict):
            for o in case.body.get("objects") or []:
                if isinstance(o, dict) and o.get("object") not in values["objects"]:
                    o["object"] = values["objects"][0]

    def harmless_join(case):
        """Never let a join reach a real node: a loopback address the
        server would dial becomes a placeholder no node listens on."""
        import ipaddress

        peer = case.body.get("peer") if isinstance(case.body, dict) else None
        if not isinstance(peer, str):
            return
        host = peer.strip().rpartition(":")[0].strip("[]")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            # Not an address Python reads; Rust's parser is no laxer, so
            # the server refuses it (400) without dialing.
            loopback = False
        if loopback:
            case.body["peer"] = HARMLESS_PEER

    @schemathesis.hook
    def before_call(context, case, kwargs):
        """Runs on every request of every phase, right before it is sent."""
        if case.operation.label == "POST /v1/cluster/join":
            harmless_join(case)
        meta = case.meta
        if meta is not None and meta.generation.mode.is_positive:
            positive(case)

if __name__ == "__main__":
    main()
else:
    _register_hooks()
