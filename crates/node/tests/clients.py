"""Checks a running node with clients nobody here wrote.

- prometheus_client's own parser reads /metrics: every family has HELP and
  a type, request latencies are histograms, chorus_build_info is there.
- sseclient-py (over urllib3) reads /v1/watch: every event has its own id,
  and reconnecting with Last-Event-ID sends the rest exactly once.

Usage: python3 clients.py http://127.0.0.1:PORT
Installs prometheus_client, sseclient-py and urllib3 if missing.
"""

import subprocess
import sys
import threading
import time
import urllib.request


def ensure(*packages):
    missing = []
    for module, package in packages:
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if not missing:
        return
    for extra in ([], ["--user"], ["--break-system-packages"]):
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", *extra, *missing],
            capture_output=True,
        )
        if done.returncode == 0:
            return
    sys.exit(f"cannot install {missing}: {done.stderr.decode()[-2000:]}")


def put(url, key, value):
    request = urllib.request.Request(f"{url}/v1/kv/sse/cfg/{key}", data=value.encode(), method="PUT")
    with urllib.request.urlopen(request, timeout=30) as r:
        assert r.status == 200, r.status


def events(url, count, last_event_id=None, ready=None):
    """Reads `count` change events (id, data) from a watch of prefix sse."""
    import json

    import sseclient
    import urllib3

    headers = {"Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    pool = urllib3.PoolManager()
    response = pool.request(
        "GET",
        f"{url}/v1/watch?prefix=sse",
        headers=headers,
        preload_content=False,
        timeout=urllib3.Timeout(connect=10, read=20),
    )
    assert response.status == 200, response.status
    if ready:
        ready.set()
    got = []
    for event in sseclient.SSEClient(response).events():
        if event.event != "change":
            continue
        data = json.loads(event.data)
        assert data["id"] == event.id, (data, event.id)
        got.append((event.id, data["key"]))
        if len(got) == count:
            break
    response.release_conn()
    return got


def main(url):
    ensure(("prometheus_client", "prometheus_client"), ("sseclient", "sseclient-py"), ("urllib3", "urllib3"))
    from prometheus_client.parser import text_string_to_metric_families

    # Something to count first.
    put(url, "warmup", "1")
    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, f in families.items():
        assert f.documentation and f.documentation != "undocumented", f"{name} has no HELP"
        assert f.type in ("counter", "gauge", "histogram"), (name, f.type)
    http = families["chorus_http_request_duration_seconds"]
    assert http.type == "histogram", http.type
    labels = {tuple(sorted(s.labels.items())) for s in http.samples}
    assert any(("route", "/v1/kv/{prefix}/{sub}/{*key}") in l and ("status", "200") in l for l in labels), labels
    assert families["chorus_build_info"].samples[0].labels.get("version"), "build_info names the version"
    for gauge in ("chorus_store_keys", "chorus_store_log_bytes", "chorus_store_dead_bytes", "chorus_open_watches"):
        assert families[gauge].type == "gauge", gauge
    # prometheus_client strips _total from counter family names.
    assert families["chorus_store_syncs"].type == "counter"

    # Live: the stream is open before the writes.
    ready = threading.Event()
    live = []
    reader = threading.Thread(target=lambda: live.extend(events(url, 3, ready=ready)))
    reader.start()
    assert ready.wait(20), "the watch did not open"
    time.sleep(0.2)
    for key in ("a", "b", "c"):
        put(url, key, "v")
    reader.join(30)
    assert [k for _, k in live] == ["a", "b", "c"], live
    ids = [i for i, _ in live]
    assert len(set(ids)) == 3, ids
    # Replayed after the first: the same ids for the rest, once each.
    assert events(url, 2, last_event_id=ids[0]) == live[1:], "resumed after the first event"
    assert events(url, 1, last_event_id=ids[1]) == live[2:], "resumed after the second event"
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1])
