"""The relay core's actions spelled out as messages, for assertions and for the hostile
relay's tampering. Production writes a ``Write``'s bytes as they are and never needs this.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nacl.public import PrivateKey

from e2echat.relay.core import Action, Close, ConnId, Persist, Write
from e2echat.wire import messages as m
from e2echat.wire.codec import decode_message, encode_message
from e2echat.wire.fastpath import Routes, fast_routes
from e2echat.wire.framing import FrameDecoder, encode_frame
from e2echat.wire.objects import SignedPrekey


@dataclass(frozen=True)
class Outgoing:
    """One message the relay writes to one connection."""

    conn: ConnId
    message: m.Message


def decode_frame(data: bytes) -> m.Message:
    """The message in ``data``, which must be exactly one whole frame. Decoded strictly, so
    a frame the core assembled from parts must be one the strict decoder accepts."""
    decoder = FrameDecoder()
    (frame,) = decoder.receive_data(data)
    assert decoder.buffered == 0, "a Write's pair holds exactly one frame"
    return decode_message(frame)


def spelled_out(actions: Iterable[Action]) -> list[Outgoing | Close]:
    """One ``Outgoing`` per connection and frame of each ``Write``, in the order the shell
    would write them; each ``Close`` where it was."""
    flat: list[Outgoing | Close] = []
    for action in actions:
        if isinstance(action, Write | Persist):
            flat.extend(Outgoing(conn, decode_frame(data)) for conn, data in action.frames)
        else:
            flat.append(action)
    return flat


def as_actions(items: Iterable[Outgoing | Close]) -> list[Action]:
    """The other way: each ``Outgoing`` encoded as the ``Write`` the core would return."""
    return [
        Write([(item.conn, encode_frame(encode_message(item.message)))])
        if isinstance(item, Outgoing)
        else item
        for item in items
    ]


def decode_for_relay(payload: bytes | bytearray | memoryview) -> m.Message | Routes:
    """How the relay reads a frame once it has paid for it (relay/intake.py):
    ``decode_message``, except that a ``send`` comes back as ``Routes``. Accepts and
    refuses exactly what ``decode_message`` does."""
    routes = fast_routes(payload)
    if routes is not None:
        return routes
    message = decode_message(payload)
    return Routes.of(message) if isinstance(message, m.Send) else message


def any_signed_prekey() -> SignedPrekey:
    """A signed prekey for a register: the relay keeps it without checking its signature,
    so for tests of the relay any will do."""
    return SignedPrekey(1, PrivateKey.generate().public_key, bytes(64))
