"""The live dashboard (issue 17, item 3): its JSON while requests run, the API key on the data
(not on the page), and the page itself in real headless Chromium: the charts render and keep
updating while requests run (a screenshot is kept in the test's tmp dir)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time

import pytest

SYSTEM = "You are a storyteller. Tell short, happy stories about animals in the forest. " * 3
KEY = {"Authorization": "Bearer dash-key"}


@pytest.fixture(scope="module")
def dash(start_server):
    return start_server("--api-key", "dash-key")


def _load(server, seconds: float) -> threading.Thread:
    """Requests sharing a long prefix, in a background thread, for about ``seconds``."""

    def run() -> None:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            body = {"text": SYSTEM + f"Story {i}:", "sampling_params": {"max_new_tokens": 24}}
            server.post("/generate", body, headers=KEY)
            i += 1

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_data_while_requests_run(dash):
    assert dash.get("/dashboard/data")[0] == 401  # the data needs the key
    status, page = dash.get("/dashboard")  # the page does not (it holds no data)
    assert status == 200 and "<canvas" in page
    t = _load(dash, 4.0)
    t.join(30)
    time.sleep(1.2)  # a heartbeat after the load
    status, d = dash.get("/dashboard/data", headers=KEY)
    assert status == 200, d
    assert set(d["requests"]) >= {"running", "queued", "grammar_waiting"}
    kv = d["kv"]
    assert kv["free"] + kv["evictable"] + kv["protected"] + kv["in_requests"] == kv["total"]
    assert kv["evictable"] > 0  # the finished requests' prefixes stay cached
    tree = d["radix_tree"]
    assert tree["nodes"] >= 2 and tree["top_prefixes"]
    top = tree["top_prefixes"][0]
    assert top["hits"] >= 2 and "storyteller" in top["text"]  # decoded text of the shared prefix
    assert d["rates"]["cache_hit_rate"] > 0.3 and d["rates"]["ttft_p50"] is not None
    assert d["history"] and max(s["gen_throughput"] for s in d["history"]) > 0


def test_page_renders_and_updates_in_chromium(dash, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    t = _load(dash, 8.0)
    url = f"{dash.url}/dashboard#key=dash-key"
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000",
            f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    # --virtual-time-budget lets the page's timers run ~6 polls before the DOM is dumped
    dom = subprocess.run(
        [*base, "--virtual-time-budget=6000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    shot = tmp_path / "dashboard.png"
    subprocess.run(
        [*base, "--virtual-time-budget=4000", f"--screenshot={shot}", url],
        capture_output=True, timeout=120,
    )  # fmt: skip
    t.join(30)
    updates = re.search(r'id="updates">(\d+)<', dom)
    assert updates and int(updates.group(1)) >= 2, dom[-2000:]  # it polled, and re-rendered
    points = [int(p) for p in re.findall(r'<canvas id="c_\w+"[^>]*data-points="(\d+)"', dom)]
    assert len(points) == 4 and points[0] > 0, points  # the request chart has data drawn
    assert 'id="error"></span>' in dom  # no fetch or auth error shown
    assert "storyteller" in dom  # the top prefixes table, decoded
    assert shot.exists() and os.path.getsize(shot) > 10_000
    print(f"dashboard screenshot: {shot}")
