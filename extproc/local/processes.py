"""Child processes of the local stack: start, wait until ready, stop in order.

Children are put in their own session (so a terminal's Ctrl-C reaches only the supervisor,
which then stops them in order) and are sent SIGTERM by the kernel if the supervisor dies,
so nothing is left listening whatever happens to it.
"""

from __future__ import annotations

import ctypes
import logging
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(slots=True)
class Child:
    name: str
    process: subprocess.Popen[bytes]
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 10.0
    # Run before the stop signal (Envoy's listener drain, stack.py); its errors are logged.
    before_stop: Callable[[], None] | None = None

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        stop_timeout: float = 10.0,
        log: Path | None = None,
        before_stop: Callable[[], None] | None = None,
    ) -> Child:
        """`log`: a file for the child's stdout and stderr (default: the supervisor's)."""
        logger.info(f"starting {name}", extra={"argv": list(argv)})
        output = log.open("ab") if log is not None else None
        try:
            process = subprocess.Popen(
                list(argv),
                env=dict(env) if env is not None else None,
                user=user,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
            )
        finally:
            if output is not None:
                output.close()  # the child has its own copy
        return cls(name, process, stop_signal, stop_timeout, before_stop)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if not self.alive:
            # Exited on its own (a signal of its own, a crash): its status still goes in the log.
            logger.info(f"{self.name} had exited", extra={"returncode": self.process.returncode})
            return
        if self.before_stop is not None:
            try:
                self.before_stop()
            except OSError as exc:
                logger.warning(f"could not prepare {self.name} to stop", extra={"error": str(exc)})
        self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            logger.warning(f"{self.name} did not stop in {self.stop_timeout:g}s; killing it")
            self.process.kill()
            self.process.wait()
        logger.info(f"stopped {self.name}", extra={"returncode": self.process.returncode})


def wait_until(
    what: str,
    ready: Callable[[], bool],
    child: Child,
    timeout: float = 60.0,
    abort: Callable[[], bool] = lambda: False,
) -> None:
    """Polls `ready` until it holds; raises if the child exits, after `timeout`, or once `abort`
    holds (the supervisor was told to stop meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if abort():
            raise RuntimeError(f"stopped while waiting for {what}")
        if not child.alive:
            raise RuntimeError(f"{child.name} exited with {child.process.returncode} before {what}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout:g}s")


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1", block: int = 1) -> int:
    """A port with `block` consecutive free ports from it, below the kernel's ephemeral range:
    a port the kernel hands out (bind to 0) can meanwhile become the local end of an outgoing
    connection, and a listener started later on it (or on the next one) fails to bind."""
    below = _ephemeral_start()
    while True:
        first = random.randrange(1024, max(1025, below - block))
        if all(_bindable(host, port) for port in range(first, first + block)):
            return first


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux: the IANA range
        return 49152


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
