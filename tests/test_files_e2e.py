"""File transfers end to end: a real relay, real clients, files on a real disk."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from nacl.public import PrivateKey

from e2echat.client import fileparts as fp
from e2echat.client.events import MessageReceived, PeerJoined
from e2echat.client.fileevents import FileOffered, TransferChanged, TransferDone, TransferProgress
from e2echat.client.filepump import FilePump
from e2echat.client.files import Transfers
from e2echat.crypto.keyring import Keyring
from e2echat.relay.limits import Limits
from e2echat.relay.server import Relay
from e2echat.ui.chat import Chat
from e2echat.wire import messages as m

from hostile import HostileRelay, deliveries
from relay_frames import Outgoing
from support import (
    FAST,
    LOOPBACK,
    TRANSFER_WAIT,
    FilePeer,
    connect,
    file_peers,
    make_file,
    meet,
    next_event,
    run_cli,
    running,
    running_relay,
    spawn_cli,
    start_relay_process,
    text_into,
)

#: a transfer takes longer than a message, the more so on a loaded machine
pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize(
    "size",
    [0, 1, 64 * 1024, 64 * 1024 + 1, 20 * 1024 * 1024],
    ids=["empty", "one-byte", "one-chunk", "chunk-and-a-byte", "20MiB"],
)
async def test_a_file_arrives_whole(tmp_path: Path, size: int) -> None:
    source = tmp_path / "report.pdf"
    data = make_file(source, size)
    async with (
        running_relay(
            byte_rate=64 * 1024 * 1024, byte_burst=64 * 1024 * 1024, rate=5000, burst=5000
        ) as relay,
        file_peers(relay, tmp_path, "alice", "bob") as (alice, bob),
    ):
        await alice.pump.send("bob", source)
        offer = await bob.peer.next(FileOffered)
        assert (offer.sender, offer.name, offer.size) == ("alice", "report.pdf", size)
        bob.transfers.accept(offer.number)
        done = await next_event(bob, TransferDone)
        assert done.ok, done
        landed = Path(done.path)
        assert landed == tmp_path / "bob" / "report.pdf"
        assert hashlib.sha256(landed.read_bytes()).digest() == hashlib.sha256(data).digest()
        assert landed.stat().st_mode & 0o777 == 0o600
        sent = await next_event(alice, TransferDone)
        assert sent.ok and sent.state == "done"
        assert [p.name for p in (tmp_path / "bob").iterdir()] == ["report.pdf"]


async def send_and_accept(
    sender: FilePeer, receiver: FilePeer, path: Path, name: str | None = None
) -> TransferDone:
    """``sender`` offers ``path``; ``receiver`` accepts; the receiver's TransferDone."""
    await sender.pump.send(receiver.nick, path, name)
    offer = await next_event(receiver, FileOffered)
    receiver.transfers.accept(offer.number)
    return await next_event(receiver, TransferDone)


async def test_malicious_names_land_safely_inside_the_downloads_directory(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"payload")
    downloads = tmp_path / "bob"
    downloads.mkdir()
    (downloads / "report.pdf").write_bytes(b"bob's own report")
    names = ["../../x", "/etc/passwd", "\x1b]0;pwned\x07title", "n" * 10_000, ".bashrc", "report.pdf"]
    async with running_relay(**FAST) as relay, file_peers(relay, tmp_path, "alice", "bob") as (alice, bob):
        for name in names:
            done = await send_and_accept(alice, bob, source, name)
            assert done.ok, done
            landed = Path(done.path)
            assert landed.parent == downloads and landed.read_bytes() == b"payload"
            assert not landed.name.startswith(".") and "\x1b" not in landed.name
            assert "\x1b" not in done.name and len(done.name.encode()) <= 200
    assert (downloads / "report.pdf").read_bytes() == b"bob's own report"
    assert sorted(p.name for p in downloads.iterdir()) == sorted(
        ["x", "passwd", "]0;pwnedtitle", "n" * 200, "bashrc", "report.pdf", "report (1).pdf"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bob", "source"]  # nothing landed elsewhere


async def test_a_file_changed_while_it_is_sent_is_not_kept(tmp_path: Path) -> None:
    """The receiver checks the whole file against the hash in the offer: bytes other than
    the ones offered are deleted, and both sides hear why."""
    source = tmp_path / "notes.txt"
    make_file(source, 300_000)
    async with running_relay(**FAST) as relay, file_peers(relay, tmp_path, "alice", "bob") as (alice, bob):
        await alice.pump.send("bob", source)
        offer = await next_event(bob, FileOffered)
        make_file(source, 300_000)  # other bytes, the same size, after the offer
        bob.transfers.accept(offer.number)
        failed = await next_event(bob, TransferDone)
        assert (failed.ok, failed.state) == (False, "failed") and "did not match" in failed.detail
        told = await next_event(alice, TransferDone)
        assert (told.ok, told.state) == (False, "failed") and "did not match" in told.detail
        assert list((tmp_path / "bob").iterdir()) == []  # the partial file went too


async def test_a_transfer_resumes_after_the_relay_restarts(tmp_path: Path) -> None:
    """The relay goes away mid-transfer: both sides pause; when it is back (with its key)
    and both have reconnected, the receiver says where it is and the transfer goes on from
    the last chunk written, to the identical file."""
    source = tmp_path / "big.bin"
    data = make_file(source, 4 * 1024 * 1024)
    slow = Limits(byte_rate=1024 * 1024, byte_burst=1024 * 1024, rate=5000, burst=5000)  # about 4 s in all
    first = Relay(LOOPBACK, 0, limits=slow)
    async with running(first), file_peers(first, tmp_path, "alice", "bob", reconnecting=True) as (alice, bob):
        port = first.port
        await alice.pump.send("bob", source)
        bob.transfers.accept((await next_event(bob, FileOffered)).number)
        while (await next_event(bob, TransferProgress)).done < 512 * 1024:
            pass
        await first.stop("restarting")
        for peer in (alice, bob):
            await next_event(peer, TransferChanged, lambda e: e.state == "paused")
        paused_at = bob.transfers.listing()[0].acked
        assert 0 < paused_at < len(data)
        async with running(Relay(LOOPBACK, port, key=first.core.key, limits=slow)):
            for peer in (alice, bob):
                await next_event(peer, TransferChanged, lambda e: e.state == "resumed")
            done = await next_event(bob, TransferDone)
            assert done.ok, done
            assert Path(done.path).read_bytes() == data
            assert (await next_event(alice, TransferDone)).ok
        # What was written before the outage was not sent again: it went on from there.
        assert bob.transfers.listing()[0].started_from >= paused_at


async def test_a_room_send_offers_everyone_online_and_says_who_is_offline(tmp_path: Path) -> None:
    """``/send #lobby``: bob rejects, carol accepts, dave is away and never talked with
    alice (no session to leave an offer in his mailbox with: the chat says so, now)."""
    source = tmp_path / "minutes.txt"
    data = make_file(source, 100_000)
    async with running_relay(**FAST) as relay:
        dave = await connect(relay, "dave")
        await dave.connection.close()
        async with file_peers(relay, tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
            while "dave" not in alice.peer.connection.core.away:
                await alice.peer.next_any_event()
            lines: list[str] = []
            chat = Chat(alice.peer.connection, text_into(lines), files=alice.pump)
            chat.handle_line(f"/send #lobby {source}")
            await next_event(bob, FileOffered)
            bob.transfers.reject(None)
            carol.transfers.accept((await next_event(carol, FileOffered)).number)
            landed = await next_event(carol, TransferDone)
            assert landed.ok and Path(landed.path).read_bytes() == data
            ends = {}
            for _ in range(2):
                done = await next_event(alice, TransferDone)
                ends[done.peer] = (done.ok, done.state, done.detail)
            assert ends == {"bob": (False, "rejected", "they declined it"), "carol": (True, "done", "")}
            assert any("not offered to dave: offline, and never talked with" in line for line in lines)
            assert sum("offered minutes.txt (100.0 kB) to" in line for line in lines) == 2


async def test_an_offer_waits_in_the_mailbox_of_someone_away(tmp_path: Path) -> None:
    """bob, whom alice has talked with, is away: her offer waits in his mailbox; back, he
    sees it, accepts, and the file goes, both online."""
    source = tmp_path / "notes.txt"
    data = make_file(source, 300_000)
    bob_identity = PrivateKey.generate()
    bob_keyring = Keyring.fresh("bob", bob_identity, time.time())
    async with running_relay(**FAST) as relay, file_peers(relay, tmp_path, "alice") as (alice,):
        bob = await file_peer(relay, tmp_path, "bob", bob_identity, keyring=bob_keyring)
        await meet(alice.peer, bob.peer)
        await bob.pump.close()
        await bob.peer.connection.close()
        while "bob" not in alice.peer.connection.core.away:
            await alice.peer.next_any_event()
        # Nothing but an offer goes into a mailbox; and only when asked to.
        chunk = fp.encode(fp.Chunk(bytes(16), 0, b"x"))
        assert not alice.peer.connection.send_file_part("bob", chunk)
        assert not alice.peer.connection.send_file_part("nobody", chunk, to_mailbox=True)
        await alice.pump.send("bob", source)
        bob = await file_peer(relay, tmp_path, "bob", bob_identity, keyring=bob_keyring)
        offer = await next_event(bob, FileOffered)
        assert (offer.sender, offer.name, offer.size) == ("alice", "notes.txt", 300_000)
        bob.transfers.accept(offer.number)
        done = await next_event(bob, TransferDone)
        assert done.ok and Path(done.path).read_bytes() == data
        assert (await next_event(alice, TransferDone)).ok
        await bob.pump.close()
        await bob.peer.connection.close()


async def test_a_bot_in_line_mode_receives_and_sends_files_with_json_events(tmp_path: Path) -> None:
    """Line mode reads /accept and /send from stdin; --json says each step in a record;
    at end of input the bot waits for its transfer to end before it leaves."""
    incoming, outgoing = tmp_path / "for-bot.bin", tmp_path / "from-bot.bin"
    data_in, data_out = make_file(incoming, 200_000), make_file(outgoing, 150_000)
    downloads = tmp_path / "bot-downloads"
    async with running_relay() as relay, file_peers(relay, tmp_path, "alice") as (alice,):
        args = ["connect", "--nick", "bot", "--host", LOOPBACK, "--port", str(relay.port)]
        args += ["--home", str(tmp_path / "home"), "--downloads", str(downloads), "--json"]
        async with spawn_cli(*args) as bot:
            await alice.peer.next(PeerJoined, lambda e: e.nick == "bot")
            await alice.pump.send("bot", incoming)
            offer = json.loads(await bot.line_with('"file_offered"'))
            assert (offer["sender"], offer["name"], offer["size"]) == ("alice", "for-bot.bin", 200_000)
            bot.stdin.write(b"/accept\n")
            progress = json.loads(await bot.line_with('"transfer_progress"'))
            assert (progress["direction"], progress["size"]) == ("in", 200_000)
            assert 0 <= progress["done"] <= 200_000 and progress["rate"] >= 0
            done = json.loads(await bot.line_with('"transfer_done"'))
            assert (done["ok"], done["direction"], done["peer"]) == (True, "in", "alice")
            assert Path(done["path"]) == downloads / "for-bot.bin"
            assert (downloads / "for-bot.bin").read_bytes() == data_in
            assert (await next_event(alice, TransferDone)).ok
            # ... and sends one, then leaves: it waits for the transfer first.
            bot.stdin.write(f"/send alice {outgoing}\n".encode())
            bot.stdin.close()
            alice.transfers.accept((await next_event(alice, FileOffered)).number)
            landed = await next_event(alice, TransferDone)
            assert landed.ok and Path(landed.path).read_bytes() == data_out
            assert await bot.exit_code() == 0


async def test_a_transfer_resumes_after_the_receiver_restarts(tmp_path: Path) -> None:
    """bob quits mid-transfer: his partial file and its record stay. Started again (same
    identity and sessions, same downloads), he takes it up, and alice goes on from the
    last chunk he wrote, to the identical file. A partial file alice no longer knows of
    ends, and goes."""
    source = tmp_path / "big.bin"
    data = make_file(source, 4 * 1024 * 1024)
    slow = Limits(byte_rate=1024 * 1024, byte_burst=1024 * 1024, rate=5000, burst=5000)  # about 4 s in all
    bob_identity = PrivateKey.generate()
    bob_keyring = Keyring.fresh("bob", bob_identity, time.time())  # his sessions.db, in effect
    async with (
        running(Relay(LOOPBACK, 0, limits=slow)) as relay,
        file_peers(relay, tmp_path, "alice") as (alice,),
    ):
        bob = await file_peer(relay, tmp_path, "bob", bob_identity, keyring=bob_keyring)
        await alice.pump.send("bob", source)
        bob.transfers.accept((await next_event(bob, FileOffered)).number)
        while (await next_event(bob, TransferProgress)).done < 512 * 1024:
            pass
        await bob.pump.close()
        await bob.peer.connection.close()
        await next_event(alice, TransferChanged, lambda e: e.state == "paused")
        parts = sorted(p.name for p in (tmp_path / "bob").iterdir())
        assert len(parts) == 2 and parts[0].endswith(".part") and parts[1].endswith(".part.record")

        bob = await file_peer(relay, tmp_path, "bob", bob_identity, keyring=bob_keyring, resume=True)
        kept = bob.transfers.listing()[0]
        assert kept.state.value == "paused" and 0 < kept.acked < len(data)
        await next_event(alice, TransferChanged, lambda e: e.state == "resumed")
        done = await next_event(bob, TransferDone)
        assert done.ok, done
        assert Path(done.path).read_bytes() == data
        assert (await next_event(alice, TransferDone)).ok
        assert sorted(p.name for p in (tmp_path / "bob").iterdir()) == ["big.bin"]
        await bob.pump.close()
        await bob.peer.connection.close()


@pytest.mark.slow
async def test_a_transfer_resumes_after_the_sender_restarts(tmp_path: Path) -> None:
    """alice quits mid-transfer; what she was sending is noted in her profile. Started
    again, she takes it up, bob says where he is, and it goes on from there."""
    source = tmp_path / "big.bin"
    data = make_file(source, 4 * 1024 * 1024)
    slow = Limits(byte_rate=1024 * 1024, byte_burst=1024 * 1024, rate=5000, burst=5000)  # about 4 s in all
    alice_identity = PrivateKey.generate()
    alice_keyring = Keyring.fresh("alice", alice_identity, time.time())
    sending = tmp_path / "alice-profile" / "sending"
    async with (
        running(Relay(LOOPBACK, 0, limits=slow)) as relay,
        file_peers(relay, tmp_path, "bob", transfers={"resend_after": 1.0, "remind_after": 2.0}) as (bob,),
    ):
        alice = await file_peer(
            relay, tmp_path, "alice", alice_identity, keyring=alice_keyring, sending=sending
        )
        await alice.pump.send("bob", source)
        assert len(list(sending.iterdir())) == 1
        bob.transfers.accept((await next_event(bob, FileOffered)).number)
        while (await next_event(bob, TransferProgress)).done < 512 * 1024:
            pass
        await alice.pump.close()
        await alice.peer.connection.close()
        assert len(list(sending.iterdir())) == 1  # kept for the next run

        alice = await file_peer(
            relay, tmp_path, "alice", alice_identity, keyring=alice_keyring, sending=sending, resume=True
        )
        assert alice.transfers.listing()[0].state.value == "paused"
        done = await next_event(bob, TransferDone)
        assert done.ok, done
        assert Path(done.path).read_bytes() == data
        assert (await next_event(alice, TransferDone)).ok
        await alice.pump.close()
        await alice.peer.connection.close()
    assert list(sending.iterdir()) == []  # over: forgotten


async def test_a_file_changed_before_the_sender_restarts_is_not_sent_on(tmp_path: Path) -> None:
    """alice offers a file and quits; before she starts again it changes (same size, other
    bytes: a link now naming another file, say). It is hashed again, and not sent."""
    source = tmp_path / "offered.bin"
    make_file(source, 100_000)
    alice_identity = PrivateKey.generate()
    alice_keyring = Keyring.fresh("alice", alice_identity, time.time())
    sending = tmp_path / "alice-profile" / "sending"
    async with running_relay(**FAST) as relay, file_peers(relay, tmp_path, "bob") as (bob,):
        alice = await file_peer(
            relay, tmp_path, "alice", alice_identity, keyring=alice_keyring, sending=sending
        )
        await alice.pump.send("bob", source)
        await next_event(bob, FileOffered)
        await alice.pump.close()
        await alice.peer.connection.close()
        source.write_bytes(b"\x00" * 100_000)
        alice = await file_peer(
            relay, tmp_path, "alice", alice_identity, keyring=alice_keyring, sending=sending, resume=True
        )
        ended = await next_event(alice, TransferDone)
        assert (ended.ok, ended.state) == (False, "cancelled") and "changed" in ended.detail
        assert (await next_event(bob, TransferDone)).state == "cancelled"  # bob is told
        await alice.pump.close()
        await alice.peer.connection.close()
    assert list(sending.iterdir()) == []


async def file_peer(
    relay: Relay, tmp_path: Path, nick: str, identity: PrivateKey, **options: Any
) -> FilePeer:
    """One more client with transfers (``resume``: taking up what an earlier run left;
    ``sending``: where it notes what it sends)."""
    resume = options.pop("resume", False)
    sending = options.pop("sending", None)
    transfers = Transfers(resend_after=1.0, remind_after=2.0)  # sooner than a person's: tests wait less
    peer = await connect(relay, nick, identity, files=transfers, **options)
    pump = FilePump(peer.connection, transfers, tmp_path / nick, sending=sending)
    if resume:
        await pump.resume_kept()
    pump.start()
    return FilePeer(peer, transfers, pump)


@pytest.mark.slow
async def test_a_transfer_the_relays_byte_rate_makes_slow_says_so_and_what_raises_it(tmp_path: Path) -> None:
    """At a relay's default 1 MiB/s a 1 GiB file takes 18 minutes: the sender is told
    that the relay is what limits it, and how its operator lifts it; a fast one is not."""
    source = tmp_path / "big.bin"
    make_file(source, 4 * 1024 * 1024)
    slow = Limits(byte_rate=64 * 1024, byte_burst=1024 * 1024, rate=5000, burst=5000)  # over a minute
    relay = Relay(LOOPBACK, 0, limits=slow)
    async with running(relay), file_peers(relay, tmp_path, "alice", "bob") as (alice, bob):
        sent = await alice.pump.send("bob", source)
        bob.transfers.accept((await next_event(bob, FileOffered)).number)
        told = await next_event(alice, TransferChanged, lambda e: e.state == "limited")
        assert "65.5 kB a second" in told.detail and "--byte-rate" in told.detail, told
        alice.transfers.cancel(sent.number)
    small = tmp_path / "small.bin"
    make_file(small, 1024 * 1024)
    async with running_relay(**FAST) as fast, file_peers(fast, tmp_path, "carol", "dave") as (carol, dave):
        await carol.pump.send("dave", small)
        dave.transfers.accept((await next_event(dave, FileOffered)).number)
        assert (await next_event(carol, TransferDone)).ok
        assert not any(isinstance(e, TransferChanged) and e.state == "limited" for e in carol.peer.seen)


async def test_the_first_builds_plain_text_records_are_removed_at_start_and_said_once(
    tmp_path: Path,
) -> None:
    home, downloads = tmp_path / "home", tmp_path / "downloads"
    (home / "sending").mkdir(parents=True)
    downloads.mkdir()
    transfer = "0123456789abcdef" * 2
    record = {"peer": "mallory", "transfer": transfer, "name": "report.pdf", "size": 13, "chunk_size": 1024}
    record |= {"digest": "00" * 32, "path": ""}  # (as the first files build wrote it)
    (downloads / f"report.pdf.{transfer[:16]}.part.json").write_text(json.dumps(record))
    (downloads / f"report.pdf.{transfer[:16]}.part").write_bytes(b"half a report")
    (home / "sending" / f"{transfer}.json").write_text(json.dumps(record | {"path": "/etc/shadow"}))
    (downloads / f"backup.{transfer[:16]}.part.json").write_text('{"mine": true}')  # the user's
    async with running_relay() as relay:
        args = ["connect", "--nick", "bob", "--host", LOOPBACK, "--port", str(relay.port)]
        args += ["--home", str(home), "--downloads", str(downloads)]
        code, out, err = await run_cli(*args)
        assert code == 0, err
        assert out.count("removed 2 plain-text transfer records") == 1, out
        assert sorted(p.name for p in downloads.iterdir()) == [
            f"backup.{transfer[:16]}.part.json",
            f"report.pdf.{transfer[:16]}.part",
        ]
        assert list((home / "sending").iterdir()) == []
        code, out, err = await run_cli(*args)
        assert code == 0, err
        assert "plain-text transfer" not in out


async def test_a_room_send_leaves_the_offer_in_the_mailbox_of_a_member_away(tmp_path: Path) -> None:
    """``/send #lobby`` to three: bob rejects, carol accepts, and dave, away but someone
    alice has talked with, finds the offer in his mailbox when he is back, accepts it, and
    the file goes with both online."""
    source = tmp_path / "minutes.txt"
    data = make_file(source, 100_000)
    dave_identity = PrivateKey.generate()
    dave_keyring = Keyring.fresh("dave", dave_identity, time.time())
    async with (
        running_relay(**FAST) as relay,
        file_peers(relay, tmp_path, "alice", "bob", "carol") as (alice, bob, carol),
    ):
        dave = await file_peer(relay, tmp_path, "dave", dave_identity, keyring=dave_keyring)
        await meet(alice.peer, dave.peer)
        await dave.pump.close()
        await dave.peer.connection.close()
        while "dave" not in alice.peer.connection.core.away:
            await alice.peer.next_any_event()
        lines: list[str] = []
        chat = Chat(alice.peer.connection, text_into(lines), files=alice.pump)
        chat.handle_line(f"/send #lobby {source}")
        bob.transfers.reject((await next_event(bob, FileOffered)).number)
        carol.transfers.accept((await next_event(carol, FileOffered)).number)
        assert (await next_event(carol, TransferDone)).ok
        dave = await file_peer(relay, tmp_path, "dave", dave_identity, keyring=dave_keyring)
        offer = await next_event(dave, FileOffered)
        assert (offer.sender, offer.name) == ("alice", "minutes.txt")
        dave.transfers.accept(offer.number)
        landed = await next_event(dave, TransferDone)
        assert landed.ok and Path(landed.path).read_bytes() == data
        ends = {}
        for _ in range(3):
            done = await next_event(alice, TransferDone)
            ends[done.peer] = (done.state, done.room)
        assert ends == {
            "bob": ("rejected", "#lobby"),
            "carol": ("done", "#lobby"),
            "dave": ("done", "#lobby"),
        }
        assert sum("offered minutes.txt (100.0 kB) to" in line for line in lines) == 3
        assert not any("not offered" in line for line in lines)
        await dave.pump.close()
        await dave.peer.connection.close()


class _Port:
    """A relay in another process, as ``connect`` needs it: its port."""

    def __init__(self, port: int) -> None:
        self.port = port


@pytest.mark.slow
async def test_a_large_file_goes_whole_through_a_relay_killed_mid_transfer_while_both_chat(
    tmp_path: Path,
) -> None:
    """Issue 20's "done when", smaller: 64 MiB through a relay process that is killed
    (SIGKILL: no goodbye) at a quarter and started again with its key; both chat before,
    during and after; the file ends identical, and what was written is not sent again."""
    source = tmp_path / "big.bin"
    data = make_file(source, 64 * 1024 * 1024)
    args = ["--key", str(tmp_path / "relay.key"), "--no-announce", "--byte-rate", str(16 << 20)]
    args += ["--byte-burst", str(16 << 20), "--rate", "5000", "--burst", "5000"]
    process, port, _ = await start_relay_process("--port", "0", *args)
    try:
        async with file_peers(_Port(port), tmp_path, "alice", "bob", reconnecting=True) as (alice, bob):
            await alice.pump.send("bob", source)
            bob.transfers.accept((await next_event(bob, FileOffered)).number)
            alice.peer.connection.send_private("bob", "before")
            while (await next_event(bob, TransferProgress)).done < len(data) // 4:
                pass
            process.kill()
            await process.wait()
            for peer in (alice, bob):
                await next_event(peer, TransferChanged, lambda e: e.state == "paused")
            paused_at = bob.transfers.listing()[0].acked
            alice.peer.connection.send_private("bob", "while the relay is away")  # held, then sent
            process, _, _ = await start_relay_process("--port", str(port), *args)
            await next_event(bob, TransferChanged, lambda e: e.state == "resumed")
            bob.peer.connection.send_private("alice", "during")
            done = await next_event(bob, TransferDone, wait=120)
            assert done.ok, done
            assert hashlib.sha256(Path(done.path).read_bytes()).digest() == hashlib.sha256(data).digest()
            assert (await next_event(alice, TransferDone)).ok
            alice.peer.connection.send_private("bob", "after")
            if not any(isinstance(e, MessageReceived) and e.text == "after" for e in bob.peer.seen):
                await bob.peer.next(MessageReceived, lambda e: e.text == "after")
            heard = [e.text for e in bob.peer.seen if isinstance(e, MessageReceived)]
            assert heard == ["before", "while the relay is away", "after"]
            if not any(isinstance(e, MessageReceived) and e.text == "during" for e in alice.peer.seen):
                await alice.peer.next(MessageReceived, lambda e: e.text == "during")
            assert bob.transfers.listing()[0].started_from >= paused_at  # not sent again
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.slow
async def test_a_receiver_still_taking_up_its_transfers_does_not_end_them(tmp_path: Path) -> None:
    """bob quits mid-transfer and starts again; alice asks him where it is before he has
    taken up his partial file (a large one takes seconds to hash again). He does not
    answer "no such transfer": she asks again, and once he has taken it up, it goes on."""
    source = tmp_path / "big.bin"
    data = make_file(source, 2 * 1024 * 1024)
    passed: asyncio.Queue[None] = asyncio.Queue()
    watching = [False]

    def watch(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        if watching[0] and relay.nick(action.conn) == "bob" and deliver.sender == "alice":
            passed.put_nowait(None)
        return [action]

    quick = {"resend_after": 1.0, "remind_after": 1.0}
    bob_identity = PrivateKey.generate()
    bob_keyring = Keyring.fresh("bob", bob_identity, time.time())  # his sessions.db, in effect
    slow = {"byte_rate": 1024 * 1024, "byte_burst": 1024 * 1024, "rate": 5000, "burst": 5000}
    async with (
        running(HostileRelay(deliveries(watch), **slow)) as relay,
        file_peers(relay, tmp_path, "alice", transfers=quick) as (alice,),
    ):
        bob = await file_peer(relay, tmp_path, "bob", bob_identity, keyring=bob_keyring)
        await alice.pump.send("bob", source)
        bob.transfers.accept((await next_event(bob, FileOffered)).number)
        while (await next_event(bob, TransferProgress)).done < 256 * 1024:
            pass
        await bob.pump.close()
        await bob.peer.connection.close()
        await next_event(alice, TransferChanged, lambda e: e.state == "paused")

        watching[0] = True
        transfers = Transfers(resend_after=1.0, remind_after=1.0, resuming=True)
        peer = await connect(relay, "bob", bob_identity, files=transfers, keyring=bob_keyring)
        for _ in range(2):  # alice's probe, and (unanswered) her next one
            await asyncio.wait_for(passed.get(), TRANSFER_WAIT)
        bob = FilePeer(peer, transfers, FilePump(peer.connection, transfers, tmp_path / "bob"))
        await bob.pump.resume_kept()
        bob.pump.start()
        done = await next_event(bob, TransferDone)
        assert done.ok, done
        assert Path(done.path).read_bytes() == data
        assert (await next_event(alice, TransferDone)).ok
        await bob.pump.close()
        await bob.peer.connection.close()
