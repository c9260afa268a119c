"""The baseline: a minimal length-prefixed forwarder, no crypto, one routing header.

Same framing as e2echat (4-byte big-endian length, then the payload) and the same
asyncio shell as the relay (a ``BufferedLink`` per connection, all reading into one
buffer, whose data_received cuts frames with e2echat's FrameDecoder), so that the
difference to the relay is the protocol work: JSON, base64, validation, registration and
the directory. Being minimal, it writes each frame to its recipient as soon as it has cut
it (the relay gathers what it has for each recipient and writes it once per turn of the
event loop).

Wire format, client to forwarder:
  first frame   2 bytes: the client's id (answered with the same 2 bytes: "you are in")
  then          2 bytes: destination id, then the body
Forwarder to client: 2 bytes: the source id, then the body. A frame addressed to its own
sender comes back to it; the load generator uses that as a per-message marker.

Run: python -m benchmarks.forwarder --port 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import struct
from typing import cast

from e2echat.errors import E2EChatError
from e2echat.streams import BufferedLink, read_buffer
from e2echat.wire.framing import FrameDecoder

_PREFIX = struct.Struct(">I")
ID_SIZE = 2


class _Client(BufferedLink):
    def __init__(self, forwarder: Forwarder) -> None:
        super().__init__(forwarder.read_buffer)
        self.forwarder = forwarder
        self.decoder = FrameDecoder()
        self.me: bytes | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (typed loosely: other event loops, such as uvloop, have their own).
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        clients = self.forwarder.clients
        try:
            frames = self.decoder.receive_data(data)
        except E2EChatError:
            self.transport.abort()
            return
        for frame in frames:
            if self.me is None:
                self.me = frame[:ID_SIZE]
                clients[self.me] = self.transport
                self.transport.write(_PREFIX.pack(ID_SIZE) + self.me)
                continue
            target = clients.get(frame[:ID_SIZE])
            if target is not None:
                target.write(_PREFIX.pack(len(frame)) + self.me + frame[ID_SIZE:])

    def connection_lost(self, exc: Exception | None) -> None:
        if self.me is not None and self.forwarder.clients.get(self.me) is self.transport:
            del self.forwarder.clients[self.me]


class Forwarder:
    def __init__(self) -> None:
        self.clients: dict[bytes, asyncio.Transport] = {}
        self.read_buffer = read_buffer()


async def main(host: str, port: int) -> None:
    forwarder = Forwarder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(forwarder), host, port)
    print(f"forwarder listening on {host}:{server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()
    for transport in list(forwarder.clients.values()):
        transport.abort()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.host, arguments.port))
