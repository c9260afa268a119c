"""Joining a relay from the command line: the relay's key is checked against the pin
for its address before anything is sent, a changed key is asked about on a terminal (or
refused), and the key of a relay met for the first time is pinned and shown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from nacl.public import PrivateKey

from e2echat.client.files import Transfers
from e2echat.client.reconnect import Client
from e2echat.client.relays import RelayTrust, relay_address
from e2echat.client.trust import KnownPeers
from e2echat.crypto.identity import fingerprint
from e2echat.crypto.keyring import Keyring
from e2echat.errors import ImpostorAnnouncement, RegistrationRefused, UntrustedRelayKey
from e2echat.store.pins import PinFile
from e2echat.store.relays import RelayPinFile
from e2echat.store.sessions import SessionFile
from e2echat.wire.grammar import DEFAULT_ROOM


async def join(
    host: str,
    port: int,
    nick: str,
    identity: PrivateKey,
    pins: tuple[PinFile, KnownPeers],
    relay_pins: RelayPinFile,
    *,
    sessions: tuple[SessionFile, Keyring] | None = None,
    password: bytes | None,
    accept: str | None,
    ask_password: Callable[[], bytes] | None,
    hold_acks: bool = False,
    files: Transfers | None = None,
    announced: str | None = None,
    rooms: tuple[str, ...] = (DEFAULT_ROOM,),
    fallbacks: Sequence[tuple[str, int]] = (),
) -> tuple[Client, str | None]:
    """Connect and register, if the relay's key is the one pinned for its address, or the
    one with the fingerprint ``accept``, or one the user accepts when asked. With
    ``ask_password`` (on a terminal), a changed key and a missing password are asked
    about; without, they are errors. ``announced`` is the fingerprint the relay's
    announcement on the LAN gave: on first contact its key must be that one (a pin, or
    ``accept``, wins over it). ``rooms``: the rooms we are in (the profile's).
    ``fallbacks``: more relays of the same cluster, tried in order when one cannot be
    reached; they must show the same key (a cluster has one), pinned under the address
    connected to. Returns the client, and what was pinned, if anything, for the chat to
    say."""
    pin_file, known_peers = pins
    session_file, keyring = sessions if sessions is not None else (None, None)
    # Our messages waiting in mailboxes, kept beside the sessions (and the numbering).
    pending = session_file.deliveries() if session_file is not None else None
    # And each room's members as last seen: what changed since the last run is said.
    last_members = session_file.last_members() if session_file is not None else None
    known_relays = relay_pins.load()
    addresses = [relay_address(*relay) for relay in ((host, port), *fallbacks)]
    pinned = next((known_relays.get(address) for address in addresses if known_relays.get(address)), None)
    # First contact with a relay found on the LAN: not "any key", but the one announced.
    # Never over a pin: an announcement is anyone's word, and must not replace a key.
    from_announcement = accept is None and pinned is None and announced is not None
    if from_announcement:
        accept = announced
    while True:
        client = Client(
            host,
            port,
            nick,
            identity,
            known_peers,
            password=password,
            relay_trust=RelayTrust(pinned, accept),
            pin_file=pin_file,
            keyring=keyring,
            session_file=session_file,
            pending=pending,
            last_members=last_members,
            hold_acks=hold_acks,
            rooms=rooms,
            files=files,
            fallbacks=fallbacks,
        )
        try:
            await client.open()
            break
        except UntrustedRelayKey as exc:
            if from_announcement:
                raise ImpostorAnnouncement(
                    host=host, port=port, offered=exc.offered, expected=exc.expected
                ) from None
            if accept is not None or ask_password is None or not _trust_new_relay_key(exc):
                raise
            accept = exc.offered
        except RegistrationRefused as exc:
            if exc.code != "password_required" or password is not None or ask_password is None:
                raise
            password = ask_password()
            # Asked again, the relay must show the same key: held in memory, and pinned
            # once registered.
            pinned = client.relay_key
    # Pinned once registered (first contact, or a new key accepted): then the notice is
    # shown with the chat, and a refusal stays one line of error.
    key = client.relay_key
    address = relay_address(client.host, client.port)
    if key is not None and known_relays.pin(address, key):
        await asyncio.to_thread(relay_pins.save, known_relays)
        if pinned is not None and pinned != key:
            return client, f"the relay at {address} has a new key, now pinned: {fingerprint(key)}"
        return client, f"pinned relay {address} key {fingerprint(key)}"
    return client, None


def _trust_new_relay_key(exc: UntrustedRelayKey) -> bool:
    """Warn that the relay's key changed and ask whether to trust the new one, on the
    terminal (the chat has not started yet)."""
    print(
        f"!! WARNING: the relay at {exc.host}:{exc.port} has a different key than the one pinned for it.\n"
        f"!!   pinned: {exc.expected}\n"
        f"!!   now:    {exc.offered}\n"
        "!! It may be an impostor, out to collect the relay password. Nothing has been sent to it.\n"
        "!! Ask whoever runs the relay whether its key changed (`e2echat relay` prints it at start).",
        flush=True,
    )
    try:
        answer = input("The relay's key changed: continue and trust the new key? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")
