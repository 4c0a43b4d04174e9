"""Auth, metrics, start-up failure, and a dead scheduler (→ /health 503, non-zero exit)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from radixlm_lang.backend.runtime_endpoint import free_port
from tests.server.conftest import Server, raw_post


@pytest.fixture(scope="module")
def guarded(start_server):
    return start_server("--api-key", "sekrit", "--enable-metrics")


def test_api_key(guarded):
    status, out = guarded.post(
        "/generate", {"text": "Hi", "sampling_params": {"max_new_tokens": 2}}
    )
    assert status == 401 and out == {"error": "Unauthorized"}
    status, out = guarded.get("/v1/models")
    assert status == 401 and "Bearer" in out["error"]["message"]
    assert guarded.get("/health")[0] == 200  # health and metrics stay open
    auth = {"Authorization": "Bearer sekrit"}
    status, out = guarded.post(
        "/generate", {"text": "Hi", "sampling_params": {"max_new_tokens": 2}}, headers=auth
    )
    assert status == 200 and out["meta_info"]["completion_tokens"] == 2
    assert guarded.get("/get_model_info", headers={"Authorization": "Bearer wrong"})[0] == 401


def test_metrics(guarded):
    auth = {"Authorization": "Bearer sekrit"}
    for _ in range(2):
        guarded.post(
            "/generate",
            {"text": "Once upon a time", "sampling_params": {"max_new_tokens": 5}},
            headers=auth,
        )
    time.sleep(1.5)  # one scheduler heartbeat carries the gauges and cache counters
    status, text = guarded.get("/metrics")
    assert status == 200
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):  # parses, or raises
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    for proc in ("process", "radixlm_scheduler_process", "radixlm_detokenizer_process"):
        assert samples[f"{proc}_resident_memory_bytes"] > 10e6  # each server process
    label = '{model_name="stories260K"}'
    assert samples[f"radixlm:num_requests_total{label}"] >= 3  # incl. the api-key test's
    assert samples[f"radixlm:generation_tokens_total{label}"] >= 10
    assert samples[f"radixlm:prompt_tokens_total{label}"] > 0
    assert samples[f"radixlm:prefix_cache_hit_tokens_total{label}"] > 0
    assert samples[f"radixlm:time_to_first_token_seconds_count{label}"] >= 3
    assert samples[f"radixlm:e2e_request_latency_seconds_count{label}"] >= 3
    assert f"radixlm:inter_token_latency_seconds_count{label}" in samples
    assert f"radixlm:queue_time_seconds_count{label}" in samples
    assert (
        f"radixlm:token_usage{label}" in samples and f"radixlm:num_running_reqs{label}" in samples
    )


def test_bad_model_path_fails_fast(tmp_path):
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "radixlm.launch_server", "--model-path", str(tmp_path / "nope"),
         "--port", str(port)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0 and "not a directory" in proc.stderr


def _gone(pid: int) -> bool:
    """Exited (or a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_killed_scheduler_means_503_and_exit(tmp_path):
    s = Server(log_path=str(tmp_path / "kill.log"))
    try:
        scheduler = s.child_pid("scheduler")
        assert scheduler in _children(s.proc.pid)
        os.kill(scheduler, signal.SIGKILL)
        saw_503 = s.wait_exit_seeing_503(15)
        assert s.proc.poll() is not None, "server did not exit"
        assert s.proc.returncode != 0
        assert saw_503
        # The detokenizer dies with the server (the resource tracker may take longer).
        detok = s.child_pid("detokenizer")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _gone(detok):
            time.sleep(0.1)
        assert _gone(detok), "the detokenizer outlived the server"
    finally:
        s.stop()


def _metric(server, name: str, auth: dict) -> float:
    text = server.get("/metrics", headers=auth)[1]
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_non_streaming_disconnect_aborts(guarded):
    """A client that gives up on a non-streamed request gets its request aborted."""
    auth = {"Authorization": "Bearer sekrit"}
    before = _metric(guarded, "radixlm:num_aborted_requests_total", auth)
    # 8 samples x 450 tokens: ~2.5 s of decode on the native CPU kernels (one sample finished in
    # under a second, so the request could complete before the disconnect was seen).
    body = {
        "text": "Once upon a time",
        "sampling_params": {"max_new_tokens": 450, "ignore_eos": True, "n": 8},
    }
    s = raw_post(guarded.port, "/generate", body, auth)
    time.sleep(0.3)
    s.close()
    deadline = time.monotonic() + 20
    while _metric(guarded, "radixlm:num_aborted_requests_total", auth) <= before:
        assert time.monotonic() < deadline, "the abandoned request was not aborted"
        time.sleep(0.2)


def test_hung_scheduler_means_503_and_exit(tmp_path):
    s = Server("--watchdog-timeout", "3", log_path=str(tmp_path / "hang.log"))
    scheduler = s.child_pid("scheduler")
    try:
        os.kill(scheduler, signal.SIGSTOP)  # alive but silent: no heartbeats
        saw_503 = s.wait_exit_seeing_503(20)
        assert s.proc.poll() is not None and s.proc.returncode != 0
        assert saw_503
        assert "hung" in s.read_log()
    finally:
        try:
            os.kill(scheduler, signal.SIGKILL)
        except ProcessLookupError:
            pass
        s.stop()


def test_constrained_violations_are_flagged_and_counted(guarded):
    """A schema with a keyword no backend enforces (``not``) whose only output violates it: the
    response says so and /metrics counts it."""
    auth = {"Authorization": "Bearer sekrit"}
    names = ("radixlm:constrained_output_violations_total",
             "radixlm:constrained_unenforced_requests_total")  # fmt: skip
    before = [_metric(guarded, n, auth) for n in names]
    schema = {"type": "integer", "minimum": 0, "maximum": 0, "not": {"const": 0}}
    body = {"text": "x", "sampling_params": {"json_schema": schema, "max_new_tokens": 4}}
    status, out = guarded.post("/generate", body, headers=auth)
    assert status == 200 and out["text"] == "0"
    report = out["meta_info"]["constraint"]
    assert report["valid"] is False and "0" in report["error"]
    assert report["unenforced"] == [{"pointer": "", "keyword": "not", "reason": ""}]
    assert [_metric(guarded, n, auth) for n in names] == [before[0] + 1, before[1] + 1]
