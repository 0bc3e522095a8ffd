"""The namespace hosts of tests/netns.py: a failed step skips naming it, and nothing is left behind."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from tests.netns import SUBNET, namespaced_hosts


def test_no_ip_command_skips_with_the_reason(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="no `ip` command"), namespaced_hosts():
        pass


def test_failed_step_skips_naming_it_and_removes_what_was_made(monkeypatch):
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        failed = cmd[:3] == ["ip", "link", "add"]
        return subprocess.CompletedProcess(cmd, 2 if failed else 0, "", "RTNETLINK answers: Operation not permitted")

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/sbin/ip")
    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(pytest.skip.Exception, match=r"step `ip link add mh\w+ type veth .*Operation not permitted"):
        with namespaced_hosts():
            pass
    added = [c[3] for c in calls if c[:3] == ["ip", "netns", "add"]]
    deleted = [c[3] for c in calls if c[:3] == ["ip", "netns", "del"]]
    assert len(added) == 2 and deleted == added


def _listed(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True).stdout


@pytest.mark.integration
def test_namespaces_are_removed_when_the_test_fails():
    if os.geteuid() != 0:
        pytest.skip("needs root to make network namespaces")
    with pytest.raises(RuntimeError), namespaced_hosts() as hosts:
        names = [h.netns for h in hosts]
        routes = _listed("-n", names[0], "route")
        assert routes.split()[:1] == [f"{SUBNET}.0/24"] and "default" not in routes  # traffic only to the peer
        raise RuntimeError("the test body failed")
    assert not any(name in _listed("netns", "list") for name in names)
    links = _listed("link")
    assert hosts[0].iface not in links and hosts[1].iface not in links


@pytest.mark.integration
def test_star_hosts_reach_the_root_namespace_and_not_each_other():
    if os.geteuid() != 0:
        pytest.skip("needs root to make network namespaces")
    probe = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()"
    with socket.create_server(("0.0.0.0", 0)) as listener, namespaced_hosts(3, star=True, prefix="netns-test") as hosts:
        port = str(listener.getsockname()[1])
        base = hosts[0].peer.rsplit(".", 2)[0]  # 10.B, a /16 no root interface used before
        assert [(h.addr, h.peer) for h in hosts] == [(f"{base}.{i}.2", f"{base}.{i}.1") for i in (1, 2, 3)]
        for host in hosts:  # each reaches the root namespace at its link's root end
            reached = subprocess.run(host.run([sys.executable, "-c", probe, host.peer, port]), capture_output=True)
            assert reached.returncode == 0, reached.stderr
        # and not another host, nor the root's end of another host's link: each namespace knows only its own /24
        for addr in (hosts[1].addr, hosts[1].peer):
            reached = subprocess.run(hosts[0].run([sys.executable, "-c", probe, addr, port]), capture_output=True)
            assert reached.returncode != 0 and b"unreachable" in reached.stderr, reached.stderr
        assert len([line for line in _listed("-o", "addr").splitlines() if f" {hosts[0].peer}/24" in line]) == 1
    assert f" {hosts[0].peer}/24" not in _listed("-o", "addr")
    assert not any(h.netns in _listed("netns", "list") for h in hosts)
