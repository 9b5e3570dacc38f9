"""Ray Train's torch process group kept on loopback for a local run.

torch's TCPStore server (the rendezvous every rank connects to) listens on every interface whatever
`MASTER_ADDR` says, and gloo listens on the address the host name resolves to. On a local Ray (node
address 127.0.0.1) `LoopbackTorchConfig` has each worker bind the store's listening socket to
`MASTER_ADDR` itself and hand it to the store, and points gloo and NCCL at the loopback interface. A
cluster keeps Ray Train's own set-up, which must be reachable from other hosts.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Iterator
from urllib.parse import parse_qsl, urlparse

from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend


def loopback_interface() -> str | None:
    """Name of the network interface that carries 127.0.0.1 (`lo` on Linux), None when there is none."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addresses):
            return name
    return None


def loopback_store(host: str, port: int, rank: int, world_size: int, timeout: timedelta):
    """The rendezvous store of a process group: rank 0 serves it on `host:port` only, the others
    connect to it there."""
    from torch.distributed import TCPStore

    if rank != 0:
        return TCPStore(host, port, world_size, False, timeout)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family, backlog=max(128, world_size))
    # The store takes the socket over (and closes it when it is done with it).
    return TCPStore(host, port, world_size, True, timeout, multi_tenant=True,
                    master_listen_fd=listener.detach(), use_libuv=True)


def _env_rendezvous(url: str, timeout: timedelta = timedelta(minutes=30), **_) -> Iterator:
    """torch's `env://` rendezvous (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) over `loopback_store`."""
    query = dict(parse_qsl(urlparse(url).query))
    rank = int(query.get("rank", os.environ.get("RANK", "-1")))
    world_size = int(query.get("world_size", os.environ.get("WORLD_SIZE", "-1")))
    store = loopback_store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), rank, world_size, timeout)
    yield store, rank, world_size
    raise RuntimeError("env:// rendezvous on loopback cannot run again")


def _prepare_worker() -> None:
    """Run in each training worker before its process group starts."""
    import importlib

    # By name: `torch.distributed.rendezvous` the attribute is the function, not the module.
    rendezvous = importlib.import_module("torch.distributed.rendezvous")
    interface = loopback_interface()
    if interface:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
    # torch refuses to register a second handler for a scheme; this worker process belongs to one run.
    rendezvous._rendezvous_handlers["env"] = _env_rendezvous


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config) -> None:
        worker_group.execute(_prepare_worker)
        super().on_start(worker_group, backend_config)


class LoopbackTorchConfig(TorchConfig):
    """Ray Train's `TorchConfig` (env:// rendezvous) with every socket of the process group on
    loopback: only for a Ray whose node address is 127.0.0.1."""

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend
