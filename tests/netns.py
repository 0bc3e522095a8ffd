"""Hosts on this machine for the multi-host tests: each host is a network namespace with its own address, joined by
veth pairs, so processes in it reach the others only over that link, as on separate machines (the filesystem is
shared, as an NFS folder is).

Two shapes:
- `namespaced_hosts(2)`: two hosts joined to each other by one veth pair on one /24 (training ranks talk peer to peer);
- `namespaced_hosts(n, star=True)`: n hosts, each joined to this (the root) namespace by its own pair and /24, host
  i at `10.B.{i + 1}.2` and the root's end at `.1` (`Host.peer`): replicas behind a balancer and a database that
  run in the root namespace. B is drawn per run among the 10.B.0.0/16 that no root interface uses: the root's
  addresses are shared with every other run on the machine (two test processes, or two checkouts, at once).

Needs root (or CAP_NET_ADMIN) and iproute2's `ip`; elsewhere it skips and names the step that failed. Everything it
made (the namespaces, the links, what runs in the namespaces) is removed on the way out, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass

import pytest

SUBNET = "10.77.0"  # private to the namespaces: the same addresses in two test runs never meet


@dataclass
class Host:
    netns: str
    iface: str
    addr: str
    peer: str
    """The address at the other end of this host's link (the other host; with star=True, the root namespace)."""

    def run(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]


class SetupFailed(Exception):
    """A step of making the hosts failed; the message names the command and what it printed."""


def _ip(*args: str) -> None:
    cmd = ["ip", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise SetupFailed(f"step `{shlex.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")


def _up(host: Host) -> None:
    _ip("-n", host.netns, "addr", "add", f"{host.addr}/24", "dev", host.iface)
    _ip("-n", host.netns, "link", "set", "lo", "up")
    _ip("-n", host.netns, "link", "set", host.iface, "up")


def _unused_slash16() -> str:
    """`10.B` for a B in 100-249 that no address of the root namespace starts with (drawn at random)."""
    listed = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, timeout=30).stdout
    used = set(re.findall(r"inet 10\.(\d+)\.", listed))
    free = [b for b in range(100, 250) if str(b) not in used]
    return f"10.{secrets.choice(free)}"


@contextlib.contextmanager
def namespaced_hosts(count: int = 2, star: bool = False, prefix: str = "ft-multihost"):
    """`count` hosts (see the module docstring); names are unique to this run."""
    if shutil.which("ip") is None:
        pytest.skip("cannot make network namespaces: no `ip` command (iproute2) on PATH")
    if not star and count != 2:
        raise ValueError(f"a veth pair joins two hosts; for {count}, use star=True")
    tag = secrets.token_hex(3)
    if star:
        base = _unused_slash16()
        hosts = [Host(f"{prefix}-{tag}-{i}", f"mh{tag}v{i}", f"{base}.{i + 1}.2", f"{base}.{i + 1}.1")
                 for i in range(count)]
        root_ends = [f"mh{tag}r{i}" for i in range(count)]
    else:
        hosts = [Host(f"{prefix}-{tag}-{i}", f"mh{tag}v{i}", f"{SUBNET}.{i + 1}", f"{SUBNET}.{2 - i}")
                 for i in range(2)]
        root_ends = []
    made: list[str] = []
    try:
        try:
            for host in hosts:
                _ip("netns", "add", host.netns)
                made.append(host.netns)
            if star:
                for host, root_end in zip(hosts, root_ends, strict=True):
                    _ip("link", "add", root_end, "type", "veth", "peer", "name", host.iface)
                    _ip("link", "set", host.iface, "netns", host.netns)
                    _ip("addr", "add", f"{host.peer}/24", "dev", root_end)
                    _ip("link", "set", root_end, "up")
                    _up(host)
            else:
                _ip("link", "add", hosts[0].iface, "type", "veth", "peer", "name", hosts[1].iface)
                for host in hosts:
                    _ip("link", "set", host.iface, "netns", host.netns)
                    _up(host)
        except SetupFailed as err:
            who = "" if os.geteuid() == 0 else f" (running as uid {os.geteuid()}: needs root or CAP_NET_ADMIN)"
            pytest.skip(f"cannot make {count} network-namespace hosts{who}: {err}")
        yield hosts
    finally:
        for netns in made:
            # what the test started there and left running (the namespace is this run's alone), then the
            # namespace, and with it the veth end inside it and so the pair
            pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=30)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)
        for name in [h.iface for h in hosts] + root_ends:  # a pair made but not moved into a namespace is still here
            subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30)
