"""`ray start --address ...` for a second Ray node on this machine with every port on loopback, for the
two-node cluster tests: `python -m tests.integration.ray_loopback_node start --address 127.0.0.1:PORT ...`.

Why not plain `ray start`: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 (Ray's default on Linux) Ray
rewrites 127.0.0.1 (the head's address and the node's own) into the machine's outward address, so the
node cannot reach a head listening on loopback and its own servers listen on that outward address;
with the variable at 0 every address stays on loopback, but `ray start` then refuses to start any node
but a head ("Multi-node Ray clusters are not supported on Windows and OSX"). So this runs Ray's own
`ray start` with the variable at 0 (in this process and every Ray process it starts) and lifts that one
check only: the CLI module alone sees the multi-node switch on, through a view of Ray's constants.
"""

from __future__ import annotations

import os
import sys
import types


def main() -> int:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: it reads it once
    from ray._private import ray_constants
    from ray.scripts import scripts

    class _Constants(types.ModuleType):
        def __getattr__(self, name):
            return getattr(ray_constants, name)

    view = _Constants(ray_constants.__name__)
    view.ENABLE_RAY_CLUSTER = True
    scripts.ray_constants = view
    sys.argv = ["ray", *sys.argv[1:]]
    return scripts.main()


if __name__ == "__main__":
    sys.exit(main())
