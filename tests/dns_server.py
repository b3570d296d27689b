"""A tiny authoritative DNS server on loopback UDP for tests: answers A queries from a table the
test changes while it runs, and counts the queries per name.

Written by hand because no DNS server library is among the project's dependencies; it speaks
only what a stub resolver asks (one question, A or AAAA, no EDNS options it must honour).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import Counter
from ipaddress import IPv4Address

_A, _AAAA, _IN = 1, 28, 1


def _question(packet: bytes) -> tuple[str, int, int]:
    """(name, type, end offset of the question) of the query's first question."""
    labels, offset = [], 12
    while packet[offset]:
        length = packet[offset]
        labels.append(packet[offset + 1 : offset + 1 + length].decode("ascii").lower())
        offset += 1 + length
    qtype = struct.unpack_from("!H", packet, offset + 1)[0]
    return ".".join(labels), qtype, offset + 5


class DnsServer:
    def __init__(self) -> None:
        self.answers: dict[str, list[str]] = {}
        self.queries: Counter[str] = Counter()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._socket.close()

    def _serve(self) -> None:
        while True:
            try:
                packet, client = self._socket.recvfrom(4096)
            except OSError:
                return
            name, qtype, end = _question(packet)
            self.queries[name] += 1
            addresses = self.answers.get(name, []) if qtype == _A else []
            known = name in self.answers
            flags = 0x8400 if known else 0x8403  # response, authoritative; NXDOMAIN if unknown
            header = packet[:2] + struct.pack("!HHHHH", flags, 1, len(addresses), 0, 0)
            records = b"".join(
                b"\xc0\x0c" + struct.pack("!HHIH", _A, _IN, 0, 4) + IPv4Address(a).packed for a in addresses
            )
            self._socket.sendto(header + packet[12:end] + records, client)
