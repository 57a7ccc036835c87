"""Several hosts on one machine: Linux network namespaces joined by veth links to a bridge.

Each :class:`Host` is a namespace with one address on 10.<n>.0.0/24; the bridge lives in
a namespace of its own, so the machine's own network is never touched. Killing a host
kills every process in it (SIGKILL) and takes its link down: to the others it vanishes,
as a machine that loses power does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

from tests.support import ROOT


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=20)


def unavailable_reason() -> str:
    """Why namespaces cannot be used here ("" when they can)."""
    probe = f"es-probe-{os.getpid()}"
    try:
        made = ip("netns", "add", probe, check=False)
    except FileNotFoundError:
        return "the `ip` command (iproute2) is not installed"
    if made.returncode != 0:
        return f"`ip netns add` is not permitted here: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return ""


class Network:
    """A bridge in its own namespace; hosts attach to it."""

    def __init__(self, tag: str, subnet: int) -> None:
        self.tag = tag
        self.subnet = subnet
        self.switch = f"es-{tag}-sw"
        self.hosts: list[Host] = []
        ip("netns", "add", self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")

    def host(self, name: str) -> Host:
        host = Host(self, name, len(self.hosts) + 1)
        self.hosts.append(host)
        return host

    def close(self) -> None:
        for host in self.hosts:
            host.kill()
            ip("netns", "del", host.ns, check=False)
        ip("netns", "del", self.switch, check=False)


class Host:
    """One namespace with address 10.<subnet>.0.<index> and the processes started in it."""

    def __init__(self, net: Network, name: str, index: int) -> None:
        self.net = net
        self.name = name
        self.ns = f"es-{net.tag}-{name}"
        self.address = f"10.{net.subnet}.0.{index}"
        self.link = f"v{index}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[BinaryIO] = []
        ip("netns", "add", self.ns)
        ip(
            "link",
            "add",
            self.link + "a",
            "netns",
            self.ns,
            "type",
            "veth",
            "peer",
            self.link + "b",
            "netns",
            net.switch,
        )
        ip("-n", net.switch, "link", "set", self.link + "b", "master", "br0", "up")
        ip("-n", self.ns, "addr", "add", f"{self.address}/24", "dev", self.link + "a")
        ip("-n", self.ns, "link", "set", self.link + "a", "up")
        ip("-n", self.ns, "link", "set", "lo", "up")

    def run(self, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``args`` inside this host, output to ``log``."""
        out = open(log, "wb")
        self._logs.append(out)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *args], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
        self.procs.append(proc)
        return proc

    def tmp_output(self, args: list[str]) -> str:
        """Run ``args`` inside this host to completion; its stdout ("" on failure)."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns, *args], capture_output=True, text=True, timeout=30, cwd=ROOT
        )
        return done.stdout if done.returncode == 0 else ""

    def embedstream(self, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        return self.run([sys.executable, "-m", "embedstream", *args], env, log)

    def kill(self) -> None:
        """Power loss: every process SIGKILLed and the link down."""
        ip("-n", self.net.switch, "link", "set", self.link + "b", "down", check=False)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for out in self._logs:
            out.close()
