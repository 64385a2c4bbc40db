"""Ports for the servers the tests and the benchmark start: free, out of the kernel's range for
outgoing connections (which could take one before its server binds it), never handed out
twice by one process."""

from __future__ import annotations

import socket
from pathlib import Path

from bench.system import PORT_SHARE, free_port, free_port_run


def test_runs_of_ports_are_free_below_the_ephemeral_range_and_never_handed_out_twice():
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    handed: list[int] = []
    for _ in range(200):
        base = free_port_run(3)
        handed += [base, base + 1, base + 2]
    handed += [free_port() for _ in range(200)]

    assert len(set(handed)) == len(handed)
    assert all(10_000 <= port < low for port in handed)
    for port in handed[:50]:  # free: a server can bind each
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_processes_side_by_side_hand_out_ports_of_their_own(monkeypatch):
    """pytest-xdist's workers each take a slice (``PORT_SHARE``): a port one of them stopped a
    server on (a broker's outage) is never handed to another before it starts it again."""
    slices = []
    for index in range(2):
        monkeypatch.setenv(PORT_SHARE, f"{index}/2")
        slices.append({free_port() for _ in range(300)} | {free_port_run(3) + 2})
    assert not slices[0] & slices[1]
    assert max(slices[0]) < min(slices[1])
