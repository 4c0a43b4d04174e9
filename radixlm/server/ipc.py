"""Local IPC plumbing: socket names in a private directory, ZMQ sockets, parent-death watch.

Topology (each arrow is a ZMQ PUSH → PULL pipe; the receiver binds):

    main ──scheduler_input──▶ scheduler ──detokenizer_input──▶ detokenizer
      ▲                          │                                  │
      └────── main_input ◀───────┴──────────────────────────────────┘

The directory is created by ``tempfile.mkdtemp`` (mode 0700: only this user can connect) and
removed by the launcher on exit.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IpcNames:
    directory: str
    scheduler_input: str
    detokenizer_input: str
    main_input: str

    @classmethod
    def create(cls) -> IpcNames:
        d = tempfile.mkdtemp(prefix="radixlm-ipc-")
        os.chmod(d, 0o700)
        return cls(
            directory=d,
            scheduler_input=f"ipc://{d}/scheduler",
            detokenizer_input=f"ipc://{d}/detokenizer",
            main_input=f"ipc://{d}/main",
        )

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def pull_socket(ctx: Any, addr: str) -> Any:
    import zmq

    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(addr)
    return sock


def push_socket(ctx: Any, addr: str) -> Any:
    import zmq

    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(addr)
    return sock


def exit_when_parent_dies(parent_pid: int) -> None:
    """Make this child process die with its parent (Linux prctl, plus a polling fallback)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                logger.error("parent process %d is gone; exiting", parent_pid)
                os._exit(1)

    threading.Thread(target=watch, name="radixlm-parent-watch", daemon=True).start()


def ignore_stop_signals(parent_pid: int) -> None:
    """SIGINT and SIGTERM are for the main process, which drains the server and then stops
    this child: a Ctrl-C or a service manager signals the whole process group, and a child
    that died first would fail the requests still draining. A signal here is logged, not
    obeyed (the main process, or SIGKILL, stops the child)."""

    def ignore(signum: int, frame: object) -> None:
        logger.info(
            "%s ignored: the server stops through its main process (pid %d)",
            signal.Signals(signum).name, parent_pid,
        )  # fmt: skip

    signal.signal(signal.SIGINT, ignore)
    signal.signal(signal.SIGTERM, ignore)


def configure_child_logging(level: str, name: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s [{name}] %(name)s: %(message)s",
    )


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of another process (Linux /proc); 0.0 where unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0
