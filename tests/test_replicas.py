"""Three chat server replicas behind nginx, sharing one PostgreSQL conversation log, each on a host of its own (a
network namespace with its own address, tests/netns.py); nginx and PostgreSQL run in this (the root) namespace, as
a balancer and a database host would. nginx runs deploy/nginx/neuralchat.conf.template, the compose deployment's
config (benchmarks/cluster.py fills it in).

One replica is frozen (SIGSTOP: the requests it holds stay in flight) in the middle of a long streamed reply, load
goes on through the balancer, and then that replica is killed (SIGKILL):
- only the requests that replica held fail, each with a clear error: nginx's 502 with the OpenAI-style JSON body of
  the template, or a stream cut before `data: [DONE]`; nginx does not retry a POST it already sent on another replica
  (which would log the prompt twice), and no request started after the kill fails: the dead replica's refused
  connections are retried on the living ones;
- no committed message is lost: every reply a client received whole is in the log with its prompt, and every
  conversation has its prompt once.

Needs root (network namespaces), Debian's nginx and postgresql, and psycopg; elsewhere it skips and says why
(fails under NEURALCHAT_REQUIRE_BACKENDS=1 where nginx or PostgreSQL is missing: scripts/test.sh installs them).
Run: sudo PYTHONPATH=. .venv/bin/pytest -q -m "" tests/test_replicas.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.netns import Host, namespaced_hosts
from tests.require_backends import skip_missing_program

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PORT = 8000
REPLICAS = 3
CLIENTS = 6
MAX_TOKENS = 12
LONG_TOKENS = 1000  # the reply cut mid-stream: long enough to be streaming still when its replica is frozen


@contextlib.contextmanager
def _cluster(tiny_model_dir, tmp_path: Path):
    """(balancer URL, the hosts, their server processes, the log's URL, nginx's access log)."""
    pytest.importorskip("psycopg")
    import httpx

    from benchmarks import cluster
    from benchmarks.serve_load import launch_server, wait_ready

    for program, find in (("nginx", cluster.nginx_binary), ("pg_ctl", cluster.postgres_bin)):
        try:
            find()
        except cluster.MissingBinary as err:
            skip_missing_program(program, str(err))
    if os.geteuid() != 0:
        pytest.skip(f"running as uid {os.geteuid()}: network namespaces need root")
    with contextlib.ExitStack() as stack:
        hosts: list[Host] = stack.enter_context(namespaced_hosts(REPLICAS, star=True, prefix="nc-replica"))
        # PostgreSQL listens on the root's end of each host's link (and loopback, for this test's reads)
        log_url = stack.enter_context(cluster.postgres(listen=["127.0.0.1", *(h.peer for h in hosts)]))
        port = log_url.rsplit(":", 1)[1].split("/")[0]
        args = argparse.Namespace(config=None, model=str(tiny_model_dir), backend=None)
        procs = []
        stack.callback(_kill_all, procs)  # SIGKILL: a stopped (SIGSTOP) replica would never act on a SIGTERM
        launched = []
        for host in hosts:
            replica_log = f"postgresql://postgres@{host.peer}:{port}/postgres"  # reached over the host's own link
            proc, url, out = launch_server(args, host=host.addr, port=PORT, wrap=host.run([]),
                                           chat_log_url=replica_log, env={"OMP_NUM_THREADS": "1"})
            procs.append(proc)
            launched.append((proc, url, out))
        for proc, url, out in launched:
            wait_ready(proc, url, out, timeout=300)
        assert {httpx.get(u + "/health", timeout=10).status_code for _, u, _ in launched} == {200}
        folder = tmp_path / "nginx"
        balancer = stack.enter_context(cluster.nginx([f"{h.addr}:{PORT}" for h in hosts], folder))
        yield balancer, hosts, procs, log_url, folder / "access.log"


def _kill_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:  # each server runs in a session of its own (launch_server)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _chat(balancer: str, tag: str, max_tokens: int = MAX_TOKENS, streaming: threading.Event | None = None) -> dict:
    """One streamed chat request through the balancer: what the client saw. `streaming` is set at its first token."""
    import httpx

    body = {"model": "default", "messages": [{"role": "user", "content": f"({tag}) tell me about lighthouses"}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True}
    seen = {"tag": tag, "started": time.monotonic(), "reply": "", "done": False}
    try:
        with httpx.stream("POST", balancer + "/v1/chat/completions", json=body, timeout=60,
                          headers={"X-Request-Id": tag}) as response:
            seen["status"] = response.status_code
            seen["conversation"] = response.headers.get("x-conversation-id")
            if response.status_code != 200:
                seen["body"] = response.read().decode(errors="replace")
                return seen
            parts = []
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    seen["done"] = True
                elif line.startswith("data: "):
                    event = json.loads(line[6:])
                    choices = event.get("choices") or []
                    parts.append((choices[0].get("delta") or {}).get("content") or "" if choices else "")
                    seen["reply"] = "".join(parts)
                    if streaming is not None and seen["reply"]:
                        streaming.set()
    except httpx.HTTPError as err:  # the stream was cut: the replica died after its first byte
        seen["error"] = f"{type(err).__name__}: {err}"
    return seen


def _established(host: Host) -> int:
    """Connections the replica on `host` holds open (requests nginx sent it)."""
    out = subprocess.run(host.run(["ss", "-Htn", "state", "established", f"( sport = :{PORT} )"]),
                         capture_output=True, text=True, timeout=30).stdout
    return len(out.splitlines())


def _upstreams(access_log: Path) -> dict[str, list[str]]:
    """request id -> the replicas nginx tried for it, in order (benchmarks/cluster.py's access log format)."""
    tried = {}
    for line in access_log.read_text().splitlines():
        head, _, upstreams = line.partition(" upstream=")
        fields = dict(part.split("=", 1) for part in head.split(" ") if "=" in part)
        tried[fields["request_id"]] = [a for a in upstreams.split(", ") if a and a != "-"]
    return tried


def test_killed_replica_fails_only_its_requests_and_loses_no_committed_message(tiny_model_dir, tmp_path):
    import psycopg

    with _cluster(tiny_model_dir, tmp_path) as (balancer, hosts, procs, log_url, access_log):
        results: list[dict] = []
        stop = threading.Event()
        lock = threading.Lock()

        def client(c: int):
            k = 0
            while not stop.is_set():
                seen = _chat(balancer, f"c{c}-{k}")
                k += 1
                with lock:
                    results.append(seen)

        def succeeded(after: float = 0.0) -> int:
            with lock:
                return sum(r["done"] and r["started"] > after for r in results)

        def wait_until(condition, what: str, timeout: float = 120) -> None:
            deadline = time.monotonic() + timeout
            while not condition():
                assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s; results so far: {results[-5:]}"
                time.sleep(0.05)

        # A long reply first, alone on the cluster: the replica streaming it is the victim, frozen (SIGSTOP) in the
        # middle of that reply; the requests nginx sends it from now on stay in flight there too.
        streaming, long = threading.Event(), {}
        threads = [threading.Thread(target=lambda: long.update(_chat(balancer, "long", LONG_TOKENS, streaming)),
                                    daemon=True)]
        threads[0].start()
        try:
            wait_until(streaming.is_set, "the long reply's first token")
            (victim_index,) = [i for i, h in enumerate(hosts) if _established(h) > 0]
            victim, victim_proc = hosts[victim_index], procs[victim_index]
            os.killpg(victim_proc.pid, signal.SIGSTOP)
            threads += [threading.Thread(target=client, args=(c,), daemon=True) for c in range(CLIENTS)]
            for t in threads[1:]:
                t.start()
            wait_until(lambda: succeeded() >= 2 * REPLICAS, "requests completing through the balancer")
            os.killpg(victim_proc.pid, signal.SIGKILL)
            victim_proc.wait()
            killed_at = time.monotonic()
            wait_until(lambda: succeeded(killed_at) >= 3 * REPLICAS, "requests completing after the kill")
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=120)
        with psycopg.connect(log_url) as con:
            rows = con.execute("SELECT session_id, role, content FROM messages ORDER BY id").fetchall()

    # the long reply was cut where its replica died: its client saw a broken stream, after part of the reply
    assert long["status"] == 200 and long["reply"] and not long["done"] and "error" in long, long
    results.append(long)
    tried = _upstreams(access_log)
    print(json.dumps({"requests": len(results), "failed": [{k: r.get(k) for k in ("tag", "status", "error", "body")}
                                                           for r in results if not r["done"]]}, indent=1))
    victim_addr = f"{victim.addr}:{PORT}"
    failed = [r for r in results if not r["done"]]
    assert failed, "no request was in flight on the killed replica"
    for r in failed:
        # only the requests the victim held fail, each sent to it alone (never retried once sent)
        assert tried.get(r["tag"]) == [victim_addr], (r, tried.get(r["tag"]))
        assert r["started"] < killed_at, r
        if "error" not in r:  # nginx's answer, before the replica's first byte: the template's JSON, not HTML
            assert r["status"] == 502, r
            error = json.loads(r["body"])["error"]
            assert error["code"] == "upstream_unavailable" and "send the request again" in error["message"], r
    later = [r for r in results if r["started"] > killed_at]
    assert later and all(r["done"] for r in later)
    assert all(tried[r["tag"]][-1] != victim_addr for r in later)  # a refused connection goes to a living one

    # the log: every reply received whole is there with its prompt; every conversation has its prompt once
    by_session: dict[str, list[tuple[str, str]]] = {}
    for session, role, content in rows:
        by_session.setdefault(session, []).append((role, content))
    done = [r for r in results if r["done"]]
    for r in done:
        assert by_session.get(r["conversation"]) == [
            ("user", f"({r['tag']}) tell me about lighthouses"), ("assistant", r["reply"])], r
    assert all([role for role, _ in msgs].count("user") == 1 for msgs in by_session.values())
    assert len(by_session) >= len(done)
