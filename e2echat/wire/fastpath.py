"""The hot paths: the messages sent and received per chat message, read and written
without the general codec.

Pure (no I/O). A room message to N people is one ``send`` with N envelopes, and each
recipient gets a ``deliver``. Building and validating a dataclass per envelope and going
through JSON and the strict decoder cost several times the encryption itself, so:

- the client writes a ``send`` with ``encode_send`` and reads a ``deliver`` with
  ``decode_deliver``;
- the relay reads a ``send`` with ``fast_routes`` (as ``Routes``: the bodies stay
  base64, since the relay never opens them; relay/intake.py charges a frame before it
  is read, and sends in any other layout go to the strict decoder) and writes each ``deliver`` from
  ``deliver_head`` + the body as it came + ``DELIVER_TAIL``;
- the relay keeps each directory entry encoded (``encode_peer``) and builds welcomes and
  directories from those parts (``encode_welcome``, ``encode_directory``).

Each is pinned by tests to the codec: the same bytes out, and nothing accepted that
``decode_message`` refuses. They read and write only the exact layout the encoders give
(which is canonical, compact JSON); for anything else the readers answer None or defer to
the strict decoder, which accepts it or explains why not. Their regular expressions are
built from grammar.py, never from a second copy of the nick grammar.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from e2echat.wire.codec import encode_record, write_number
from e2echat.wire.grammar import (
    MAX_BODY,
    MAX_ID,
    MAX_ITEMS,
    NICK,
    NICK_CHARS,
    NICK_MAX,
    PROTOCOL_VERSION,
    check_bytes,
    check_id,
    check_nick,
    require,
)
from e2echat.wire.messages import PeerInfo, Send

__all__ = [
    "DELIVER_TAIL",
    "Routes",
    "decode_deliver",
    "deliver_head",
    "encode_directory",
    "encode_peer",
    "encode_send",
    "encode_welcome",
]

# The pieces of the regular expressions, as bytes: a nick, and a nick with a possessive
# repeat (it is always followed by a '"', which it cannot hold, so giving characters back
# never helps); a base64 text: its alphabet, then at most two '=' (possessive too: nothing
# here ever needs to backtrack). Neither can hold '"', '{', '}', ',' or '\\', so a JSON
# string of either needs no escaping and its end is the first '"' after its start.
_NICK = NICK.encode("ascii")
_NICK_POSSESSIVE = b"[%b]{1,%d}+" % (NICK_CHARS.encode("ascii"), NICK_MAX)
_BASE64 = rb"[A-Za-z0-9+/]*+={0,2}+"
# A message id as JSON writes it: no sign, no leading zero, no more digits than MAX_ID has.
_ID = rb"0|[1-9][0-9]{0,%d}+" % (len(str(MAX_ID)) - 1)

# -- the relay's view of a send -----------------------------------------------------------

# A send exactly as ``encode_send`` writes it, every field checked in one pass of the regex
# engine. A base64 body of a length that is a multiple of 4 (checked per body) is exactly
# what ``b64decode(..., validate=True)`` accepts.
_SEND_ITEM = rb'\{"to":"%b","body":"%b"\}' % (_NICK_POSSESSIVE, _BASE64)
_CANONICAL_SEND = re.compile(
    rb'\{"v":%d,"type":"send","id":(%b),"items":\[(%b(?:,%b)*+)\]\}'
    % (PROTOCOL_VERSION, _ID, _SEND_ITEM, _SEND_ITEM)
)
_FIRST_TO, _LAST_END = len(b'{"to":"'), len(b'"}')
_NEXT_ITEM, _BODY = b'"},{"to":"', b'","body":"'
# The longest base64 text that can hold a body of MAX_BODY bytes.
_MAX_BODY_BASE64 = -(-MAX_BODY // 3) * 4


@dataclass(frozen=True, slots=True)
class Routes:
    """A ``send`` as the relay reads it: (recipient, body) pairs, the bodies left in base64.

    The relay never opens a body, so it checks that each is valid base64 of the allowed
    size and writes it on as it came, instead of decoding and re-encoding it per delivery.
    """

    id: int
    #: (recipient, body as base64 text in ASCII bytes)
    items: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, send: Send) -> Routes:
        return cls(send.id, tuple((e.to, base64.b64encode(e.body)) for e in send.items))


def _base64_size(text: bytes) -> int:
    return len(text) // 4 * 3 - (2 if text.endswith(b"==") else 1 if text.endswith(b"=") else 0)


def fast_routes(payload: bytes | bytearray | memoryview) -> Routes | None:
    """A ``send`` in the form clients write it, checked without JSON decoding or a
    Python-level check per character; None for anything else (other spacing, field
    order, escapes), which the strict decoder then accepts or explains. The relay calls
    it on its own, to charge a frame that needs the strict decoder before decoding it."""
    form = _CANONICAL_SEND.fullmatch(payload)
    if form is None:
        return None
    ident = int(form[1])
    items = form[2][_FIRST_TO:-_LAST_END].split(_NEXT_ITEM)
    if ident > MAX_ID or len(items) > MAX_ITEMS:
        return None
    routes = []
    for item in items:
        to, body = item.split(_BODY)
        size = len(body)
        # Only a body near the limit needs its decoded size worked out.
        if not size or size % 4 or (size > _MAX_BODY_BASE64 - 4 and _base64_size(body) > MAX_BODY):
            return None
        routes.append((to.decode("ascii"), body))
    return Routes(ident, tuple(routes))


# -- the client's send --------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _envelope_head(to: str) -> bytes:
    check_nick(to, "recipient")
    return b'{"to":"%b","body":"' % to.encode("ascii")


def encode_send(message_id: int, items: Sequence[tuple[str, bytes]]) -> bytes:
    """``encode_message(Send(message_id, (Envelope(to, body), ...)))``, byte for byte,
    without building the dataclasses. Checks what they check (an invalid nick or body, or
    a bad id or count, raises ``LocalProtocolError``). A valid nick and base64 need no JSON
    escaping, so the payload is assembled from pieces; each nick's piece is made (and the
    nick checked) once, not once per message."""
    check_id(message_id)
    require(0 < len(items) <= MAX_ITEMS, f"a send needs 1 to {MAX_ITEMS} envelopes")
    b64 = binascii.b2a_base64
    head = _envelope_head  # checks the nick (once per nick: it is cached)
    parts = []
    for to, body in items:
        if type(to) is not str:
            check_nick(to, "recipient")  # raises
        if type(body) is not bytes or not 0 < len(body) <= MAX_BODY:
            check_bytes(body, "body", limit=MAX_BODY)  # raises
        parts.append(head(to) + b64(body, newline=False))
    items_json = b'"},'.join(parts) + b'"}'
    return b'{"v":%d,"type":"send","id":%d,"items":[%b]}' % (PROTOCOL_VERSION, message_id, items_json)


# -- deliver ------------------------------------------------------------------------------

#: A ``deliver`` payload is ``deliver_head(sender) + base64 body + DELIVER_TAIL``.
DELIVER_TAIL = b'"}'
_DELIVER_HEAD = b'{"v":%d,"type":"deliver","from":"%%b","body":"' % PROTOCOL_VERSION
_CANONICAL_DELIVER_HEAD = re.compile(
    rb'\{"v":%d,"type":"deliver","from":"(%b)","body":"' % (PROTOCOL_VERSION, _NICK)
)


def deliver_head(sender: str) -> bytes:
    check_nick(sender, "sender")
    return _DELIVER_HEAD % sender.encode("ascii")


def decode_deliver(payload: bytes | bytearray | memoryview) -> tuple[str, bytes] | None:
    """(sender, body) if ``payload`` is a ``deliver`` in the exact form ``encode_message``
    gives it and ``decode_message`` would accept it; None for anything else, which the
    caller then hands to ``decode_message`` (to decode it, or to refuse it properly)."""
    head = _CANONICAL_DELIVER_HEAD.match(payload)
    if head is None or payload[-2:] != DELIVER_TAIL:
        return None
    try:
        # What the strict decoder's ``b64decode(..., validate=True)`` calls on the body. It
        # refuses every byte that is not base64 (a quote, a backslash, anything JSON would
        # unescape), so what it takes is a JSON string with nothing to unescape and the
        # payload ends right here.
        body = binascii.a2b_base64(payload[head.end() : -2], strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    if not 0 < len(body) <= MAX_BODY:
        return None
    return _sender(head[1]), body


@functools.lru_cache(maxsize=4096)
def _sender(nick: bytes) -> str:
    return nick.decode("ascii")  # the regex let only a nick's ASCII characters through


# -- the relay's directory ----------------------------------------------------------------


def encode_peer(peer: PeerInfo) -> bytes:
    """One directory entry as JSON, for ``encode_welcome`` and ``encode_directory``."""
    return encode_record(peer)


_LIMITS = (b"rate", b"burst", b"byte_rate", b"byte_burst")  # in Welcome's order


def encode_welcome(
    nick: str,
    encoded_peers: Sequence[bytes],
    *,
    rate: float,
    burst: float,
    byte_rate: float,
    byte_burst: float,
    prekeys: int,
    more: bool = False,
) -> bytes:
    """``encode_message(Welcome(nick, rate, burst, byte_rate, byte_burst, prekeys, peers,
    more))`` from the peers' ``encode_peer``."""
    check_nick(nick)
    limits = (rate, burst, byte_rate, byte_burst)
    require(
        all(type(x) is float and math.isfinite(x) and x > 0 for x in limits),
        "rates and bursts must be finite floats above 0",
    )
    check_id(prekeys, "prekeys")
    pairs = zip(_LIMITS, limits, strict=True)
    fields = b",".join(b'"%b":%b' % (name, write_number(value)) for name, value in pairs)
    head = b'{"v":%d,"type":"welcome","nick":"%b",%b,"prekeys":%d,"peers":[' % (
        PROTOCOL_VERSION,
        nick.encode("ascii"),
        fields,
        prekeys,
    )
    return head + b",".join(encoded_peers) + (b'],"more":true}' if more else b'],"more":false}')


def encode_directory(encoded_peers: Sequence[bytes], *, more: bool = False) -> bytes:
    """``encode_message(Directory(peers, more))`` from the peers' ``encode_peer``."""
    head = b'{"v":%d,"type":"directory","peers":[' % PROTOCOL_VERSION
    return head + b",".join(encoded_peers) + (b'],"more":true}' if more else b'],"more":false}')
