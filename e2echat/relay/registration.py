"""Registering with the relay, without any I/O: whether a ``register`` is let in, the
welcome (with the directory of its contacts) that the newcomer is sent first, and the
member lists of its rooms after it.

``RelayCore`` keeps the directory itself; these functions only read it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator, Mapping

from nacl.public import PrivateKey

from e2echat.crypto.identity import opened_identity_proof, session_proof_verifies
from e2echat.wire.fastpath import encode_directory, encode_members, encode_welcome
from e2echat.wire.framing import encode_frame
from e2echat.wire.grammar import skeleton
from e2echat.wire.messages import Register
from e2echat.wire.objects import PeerInfo

# Directory entries per frame: about 140 bytes each on the wire, so 2,000 make ~280 KiB.
DIRECTORY_CHUNK = 2000


def _digest(secret: bytes) -> bytes:
    # Compare digests, not the secrets: compare_digest is constant-time only for inputs of
    # equal length, and the length of a password is part of the secret.
    return hashlib.sha256(b"e2echat relay password" + secret).digest()


def admit(
    key: PrivateKey,
    challenge: bytes,
    password: bytes | None,
    skeletons: Mapping[str, str],
    message: Register,
) -> PeerInfo | tuple[str, str]:
    """The directory entry of a newcomer who sent ``message`` in answer to ``challenge``,
    or why it is refused: an error code and its text.

    Both proofs must open with the relay's ``key`` (the identity proof carries the
    ``password``, if the relay has one), and the nick must be neither online already nor
    look like one that is (``skeletons``: nick skeleton -> the nick online that has it).
    """
    given_password = opened_identity_proof(key, challenge, message)
    if given_password is None:
        return "bad_proof", "registration proof did not verify"
    if not session_proof_verifies(key, challenge, message):
        # Someone else's session key: registered, it would make its owner's peers see
        # a replayed key (or a split view) and blame the relay.
        return "bad_session_proof", "registration proof for the session key did not verify"
    if password is not None and not hmac.compare_digest(_digest(given_password), _digest(password)):
        return "bad_password", "wrong or missing relay password (ask whoever runs the relay)"
    online = skeletons.get(skeleton(message.nick))
    if online == message.nick:
        return "nick_taken", f"nick {message.nick!r} is already online; choose another"
    if online is not None:  # "Bob" beside "bob", "aIice" beside "alice"
        return (
            "nick_confusable",
            f"nick {message.nick!r} looks too much like {online!r}, who is online; choose another",
        )
    return PeerInfo(message.nick, message.identity_key, message.session_key)


def reserved(nick: str, until: float) -> tuple[str, str]:
    """Why a register of ``nick`` is refused while messages wait for it under another
    identity key, until Unix time ``until``: an error code and its text. Else anyone
    could wipe an away user's mail by taking the nick with a key of their own (clients
    would warn of the key change, but the mail would be gone)."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(until))
    text = f"messages wait here for another key of {nick!r}; they expire by {when} (or use another nick)"
    return "nick_reserved", text


def welcome_frames(
    nick: str, encoded: list[bytes], advertised: dict[str, float], prekeys: int, *, relay_id: bytes
) -> list[bytes]:
    """The frames a newcomer ``nick`` is sent: the welcome, with the rates and the mailbox
    time to live ``advertised`` (so that clients pace themselves to them), how many
    one-time ``prekeys`` the relay holds for it and the ``relay_id`` of its mailboxes, and
    the directory (``encoded`` entries).

    A big directory goes in several frames, each well under MAX_FRAME. The entries are
    kept encoded, so a join costs copying the directory, not encoding it.
    """
    chunk = DIRECTORY_CHUNK
    starts = range(0, len(encoded), chunk) if encoded else [0]
    frames: list[bytes] = []
    for start in starts:
        end = start + chunk
        parts, more = encoded[start:end], end < len(encoded)
        if start == 0:
            payload = encode_welcome(nick, parts, prekeys=prekeys, more=more, relay_id=relay_id, **advertised)
        else:
            payload = encode_directory(parts, more=more)
        frames.append(encode_frame(payload))
    return frames


def members_pages(room: str, peers: list[bytes], away: list[bytes]) -> Iterator[bytes]:
    """The ``members`` frames of ``room``, from its members online (``encode_peer``) and
    away (``encode_member``), made one at a time as they are read: at least one,
    ``DIRECTORY_CHUNK`` entries each. Both kept encoded (``Kept.encoded_member``): 50,000
    members cost ~30 ms to encode afresh; a list waiting to be sent holds only these."""
    chunk = DIRECTORY_CHUNK
    entries = len(peers) + len(away)
    for start in range(0, entries, chunk) if entries else [0]:
        end = start + chunk
        page_peers = peers[start:end]
        page_away = away[max(0, start - len(peers)) : max(0, end - len(peers))]
        yield encode_frame(encode_members(room, page_peers, page_away, more=end < entries))
