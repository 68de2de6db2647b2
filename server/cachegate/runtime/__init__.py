"""The process runtime: what hosts the gRPC layer in processes and threads.

The entry point (`main`: the only module that reads the environment, and logging),
the composition root (`_compose.build_service`: the one place that builds a
process's parts, used by production and the tests alike), the worker plan (`_plan`,
with CPU placement `_cpus`, each worker's memory `_memory`, both from the cgroup limits
`_cgroup` finds), the supervisor of the workers (`_supervisor`, its
restarts `_restarts`, and `_board`, the shared memory through which admin RPCs reach
every worker), the RPC thread pool (`_threads`), the HTTP side
port for metrics and health (`_http`, `_httpserver`) and the allocator bounds
(`_malloc`).
"""

from cachegate.runtime._compose import Service, build_service
from cachegate.runtime._http import HttpListenError, HttpSidePort

__all__ = ["HttpListenError", "HttpSidePort", "Service", "build_service"]
