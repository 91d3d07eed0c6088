"""Former home of the local servers' process helper, now :mod:`pipeline.local_servers.process`.

Kept as a re-export because tests/infra/test_dockerfiles.py imports ``find_executable`` from here.
"""

from pipeline.local_servers.process import (
    find_executable,
    free_port,
    get_json,
    kill,
    log_tail,
    pid_alive,
    port_in_use,
    run_checked,
    spawn,
    stop,
    wait_ready,
)

__all__ = [
    "find_executable",
    "free_port",
    "get_json",
    "kill",
    "log_tail",
    "pid_alive",
    "port_in_use",
    "run_checked",
    "spawn",
    "stop",
    "wait_ready",
]
