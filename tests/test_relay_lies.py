"""Lies the relay can still tell (issue 16), each mounted with a hostile relay: what the
client shows must not let them pass unnoticed."""

from __future__ import annotations

import asyncio
import time

from e2echat.client.core import MessageReceived
from e2echat.ui.chat import Chat
from e2echat.wire import messages as m

from hostile import HostileRelay, deliveries
from relay_frames import Outgoing
from support import WAIT, peers, running, text_into

# -- a message held back shows its age -------------------------------------------------------


async def test_a_message_the_relay_held_back_is_shown_with_its_age() -> None:
    """The relay holds alice's reply for five minutes and nothing overtakes it, so it is not
    [late]; the send time inside the encryption still says how old it is."""
    held: list[m.Deliver] = []
    caught = asyncio.Event()
    holding = False

    def hold(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        if holding and deliver.sender == "alice":
            held.append(deliver)
            caught.set()
            return []
        return [action]

    async with running(HostileRelay(deliveries(hold))) as relay, peers(relay, "alice", "bob") as (alice, bob):
        passed = [0.0]  # what has passed by bob's clock, beyond the real time
        lines: list[str] = []
        chat = Chat(bob.connection, text_into(lines), clock=lambda: time.time() + passed[0])
        alice.connection.send_private("bob", "on my way")
        chat.show(await bob.next(MessageReceived))
        assert lines[-1].endswith("[private] <alice ?> on my way")  # fresh: no age

        holding = True
        alice.connection.send_private("bob", "yes, sell")
        await asyncio.wait_for(caught.wait(), WAIT)
        passed[0] = 5 * 60 + 1
        relay.inject("bob", held[0])
        got = await bob.next(MessageReceived)
        assert not got.late  # nothing overtook it: [late] cannot tell
        chat.show(got)
        assert lines[-1].endswith("[private] (sent 5 min ago) <alice ?> yes, sell")
