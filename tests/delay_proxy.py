"""A TCP proxy with a switchable delay, for slowing the network to a dependency in a test.

It runs its own event loop in a daemon thread, so the test (and the stack's processes) talk
through it like through a slow link. Every chunk read from either side waits `delay` seconds
before it is forwarded; setting `delay` takes effect for the next chunk. Either side closing
closes the other: a restarted server is seen by the client as a lost connection, as it would
be without the proxy. Written by hand: the package lists hold no maintained asyncio TCP proxy
with a runtime-switchable delay (toxiproxy is a Go service).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

_READ_SIZE = 64 * 1024


@dataclass
class DelayProxy:
    target_host: str
    target_port: int
    delay: float = 0.0
    port: int = 0  # the listening port, once started
    connections: int = 0  # accepted so far
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _server: asyncio.Server | None = None
    _thread: threading.Thread | None = None
    _pumps: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self, port: int) -> None:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", port))
            self.port = port
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"delay-proxy-{port}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the delay proxy did not start")

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._pumps):
                task.cancel()
            await asyncio.gather(*self._pumps, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_writer.close()
            return
        pumps = [
            self._loop.create_task(self._pump(client_reader, server_writer)),
            self._loop.create_task(self._pump(server_reader, client_writer)),
        ]
        for task in pumps:
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)
        # One direction ending ends the connection: both sockets close.
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for writer in (client_writer, server_writer):
            writer.close()
        for task in pumps:
            task.cancel()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(_READ_SIZE):
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
