"""The baseline: a minimal length-prefixed forwarder, no crypto, one routing header.

Same framing as e2echat (4-byte big-endian length, then the payload) and the same
asyncio-streams shell as the relay (read 64 KiB, cut frames with e2echat's FrameDecoder,
write to the recipient's StreamWriter), so that the difference to the relay is the
protocol work: JSON, base64, validation, registration and the directory.

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

from e2echat.framing import FrameDecoder

_PREFIX = struct.Struct(">I")
_READ_CHUNK = 64 * 1024
ID_SIZE = 2


class Forwarder:
    def __init__(self) -> None:
        self.writers: dict[bytes, asyncio.StreamWriter] = {}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        decoder = FrameDecoder()
        me: bytes | None = None
        try:
            while True:
                data = await reader.read(_READ_CHUNK)
                if not data:
                    return
                for frame in decoder.receive_data(data):
                    if me is None:
                        me = frame[:ID_SIZE]
                        self.writers[me] = writer
                        writer.write(_PREFIX.pack(ID_SIZE) + me)
                        continue
                    target = self.writers.get(frame[:ID_SIZE])
                    if target is not None:
                        target.write(_PREFIX.pack(len(frame)) + me + frame[ID_SIZE:])
        except (ConnectionError, OSError):
            return
        finally:
            if me is not None and self.writers.get(me) is writer:
                del self.writers[me]
            writer.close()


async def main(host: str, port: int) -> None:
    forwarder = Forwarder()
    server = await asyncio.start_server(forwarder.serve, host, port)
    print(f"forwarder listening on {host}:{server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()
    for writer in list(forwarder.writers.values()):
        writer.transport.abort()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.host, arguments.port))
