"""The rendezvous store of a local run's process group listens on the address it is given only."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import psutil

from llm.train.loopback import loopback_interface, loopback_store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_store_listens_on_loopback_and_serves_the_other_ranks():
    port = _free_port()
    timeout = timedelta(seconds=30)
    with ThreadPoolExecutor(1) as pool:  # rank 0 waits for the other rank to join
        joining = pool.submit(loopback_store, "127.0.0.1", port, 1, 2, timeout)
        server = loopback_store("127.0.0.1", port, 0, 2, timeout)
        client = joining.result()
    server.set("key", "value")
    assert client.get("key") == b"value"
    listening = {c.laddr.ip for c in psutil.Process().net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert listening == {"127.0.0.1"}


def test_the_loopback_interface_carries_127_0_0_1():
    name = loopback_interface()
    assert name is not None
    assert any(a.address == "127.0.0.1" for a in psutil.net_if_addrs()[name])
