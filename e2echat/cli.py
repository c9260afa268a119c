"""The command line: what each command does, and the one place that turns errors into messages and
exit codes. Nothing below this module prints a traceback at a user."""

from __future__ import annotations

import argparse
import asyncio
import functools
import getpass
import io
import logging
import os
import shutil
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacl.public import PrivateKey

from e2echat.client.filepump import FilePump
from e2echat.client.files import Transfers
from e2echat.client.relays import parse_relays
from e2echat.client.trust import KnownPeers
from e2echat.crypto.identity import fingerprint
from e2echat.crypto.keyring import Keyring
from e2echat.errors import (
    ClusterUnavailable,
    E2EChatError,
    HistoryIncomplete,
    KeyFileError,
    NoRelayFound,
    PassphraseRequired,
    UsageError,
)
from e2echat.options import BROWSE_SECONDS, LIMIT_FLAGS, build_parser, mailbox_limits
from e2echat.relay.cluster.wire import MAX_REPLICAS, check_name
from e2echat.relay.limits import Limits
from e2echat.relay.server import DEFAULT_PORT, Relay, run_relay
from e2echat.relay.sqlite_store import SqliteStore
from e2echat.store.downloads import default_downloads, remove_plaintext_records
from e2echat.store.files import exclusive, write_private_file
from e2echat.store.history import HISTORY_FILE, HistoryStore
from e2echat.store.keyfile import (
    IDENTITY_FILE,
    is_protected,
    load_identity,
    load_or_create_identity,
    load_or_create_relay_key,
    stored_public_key,
)
from e2echat.store.pins import KNOWN_PEERS_FILE, PinFile
from e2echat.store.profiles import (
    CHAT_SETTINGS,
    CURRENT_ROOM,
    PLAINTEXT_INPUT_FILE,
    ROOMS,
    keep_rooms,
    keep_setting,
    last_profile,
    load_settings,
    profile_dir,
    relay_key_path,
    remember_last_profile,
    save_settings,
)
from e2echat.store.relays import KNOWN_RELAYS_FILE, RelayPinFile
from e2echat.store.sessions import SESSIONS_FILE, SessionFile
from e2echat.ui.cells import neutralize, wrap_cells
from e2echat.ui.chat import Chat
from e2echat.ui.joining import join
from e2echat.ui.linemode import line_writer, run_line_mode
from e2echat.ui.repl import input_history, make_session, run_repl, terminal_writer
from e2echat.ui.roomlist import RoomList
from e2echat.ui.settings import settings_from
from e2echat.ui.transcript import export_json, export_text
from e2echat.wire.grammar import MAX_PASSWORD, NICK_RULE, is_valid_nick

if TYPE_CHECKING:
    from e2echat.discovery import Announced

EXIT_INTERRUPTED = 130  # the shell convention for "stopped by Ctrl+C"
# As for a lost relay: something typed never left this machine (in line mode also: a line
# was refused, or a message was not delivered to everyone it was meant for).
EXIT_NOT_SENT = 4


def _run_relay(args: argparse.Namespace) -> int:
    level = "WARNING" if args.quiet else args.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        kept = mailbox_limits(args)
    except ValueError as exc:
        raise UsageError(detail=str(exc)) from None
    given = {field: getattr(args, field) for field, *_ in LIMIT_FLAGS}
    limits = replace(Limits(**given), **kept)
    password = _relay_password(args.password_file)
    say = (lambda text: None) if args.quiet else (lambda text: print(text, flush=True))
    key_path = Path(args.key).expanduser() if args.key else relay_key_path()
    key, created = load_or_create_relay_key(key_path)
    note = (
        f"Its key is in {key_path}{' (made just now)' if created else ''}: keep that file, and "
        "clients know the relay again after a restart."
    )
    store = SqliteStore(Path(args.store).expanduser()) if args.store else None
    if store is not None:
        note += f"\nWhat it knows is kept in {args.store}: people away get their messages after a restart."
    make_relay: Callable[..., Relay] = Relay
    if args.cluster:
        make_relay = _cluster_relay(args)
        note += (
            f"\nIt is one relay of the cluster {args.cluster_name!r} on {args.cluster}: give people "
            "all its relays (--host A:PORT,B:PORT,...), so that they move to another if this one goes."
        )
    serve = run_relay(
        args.host,
        args.port,
        say,
        limits=limits,
        password=password,
        key=key,
        key_note=note,
        store=store,
        announce=not args.no_announce,
        make_relay=make_relay,
    )
    try:
        asyncio.run(serve)
    finally:
        if store is not None:
            store.close()  # closed already, unless the relay never started
    return 0


def _cluster_relay(args: argparse.Namespace) -> Callable[..., Relay]:
    """What makes a relay of the cluster ``--cluster`` names (nats-py is imported here, by
    those who ask for a cluster)."""
    try:
        from e2echat.relay.cluster.relay import ClusterRelay
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "nats":
            raise ClusterUnavailable() from None
        raise
    try:
        name = check_name(args.cluster_name)
    except ValueError as exc:
        raise UsageError(detail=str(exc)) from None
    nats_options: dict[str, Any] = {}
    if args.cluster_creds:
        creds = Path(args.cluster_creds).expanduser()
        try:
            creds.read_bytes()  # nats-py reads it only once connected, and says less
        except OSError as exc:
            raise UsageError(detail=f"--cluster-creds {args.cluster_creds}: {exc.strerror or exc}") from None
        nats_options["user_credentials"] = str(creds)
    if args.cluster_ca:
        try:
            nats_options["tls"] = ssl.create_default_context(cafile=str(Path(args.cluster_ca).expanduser()))
        except OSError as exc:
            raise UsageError(detail=f"--cluster-ca {args.cluster_ca}: {exc.strerror or exc}") from None
    if not 1 <= args.cluster_replicas <= MAX_REPLICAS:
        raise UsageError(detail=f"--cluster-replicas must be 1 to {MAX_REPLICAS} (JetStream's bound)")
    return functools.partial(
        ClusterRelay,
        cluster=args.cluster,
        cluster_name=name,
        nats_options=nats_options,
        cluster_replicas=args.cluster_replicas,
    )


def _relay_password(path: str | None) -> bytes | None:
    """The relay password from --password-file, else E2ECHAT_RELAY_PASSWORD, else none."""
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                line = handle.readline().rstrip("\r\n")
        except OSError as exc:
            raise UsageError(detail=f"cannot read the password file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(detail=f"the password file {path} is not UTF-8 text") from None
        if not line:
            raise UsageError(detail=f"the password file {path} is empty")
        return _checked_password(line.encode("utf-8"))
    from_environment = os.environ.get("E2ECHAT_RELAY_PASSWORD")
    if not from_environment:
        return None
    try:
        return _checked_password(from_environment.encode("utf-8"))
    except UnicodeEncodeError:  # bytes that are not UTF-8, kept by Python as surrogates
        raise UsageError(detail="E2ECHAT_RELAY_PASSWORD is not UTF-8 text") from None


def _checked_password(password: bytes) -> bytes:
    if len(password) > MAX_PASSWORD:
        raise UsageError(detail=f"the relay password is longer than {MAX_PASSWORD} bytes")
    return password


def _run_connect(args: argparse.Namespace) -> int:
    # What peers send is printed: it must never fail to print (a non-UTF-8 terminal).
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not args.json
    nick, directory = _profile(args, interactive)
    if args.port == 0:
        raise UsageError(detail="--port must be the relay's port (1-65535)")
    settings = load_settings(directory)
    #: the key fingerprint the relay's announcement on the LAN gave, if it was found so
    args.announced = None
    if args.host is None and args.port is None and "host" not in settings:
        found = _find_relay(interactive)
        if found is not None:
            args.host, args.port, args.announced = found.host, found.port, found.fingerprint
    args.host = args.host or settings.get("host") or "127.0.0.1"
    args.port = args.port or settings.get("port") or DEFAULT_PORT
    args.nick = nick
    logging.basicConfig(level=logging.WARNING, format="e2echat: %(message)s")
    with exclusive(directory):
        identity, created = load_or_create_identity(directory, _passphrase(args.passphrase, directory))
        pin_file = PinFile(directory / KNOWN_PEERS_FILE)
        known_peers = pin_file.load()
        session_file = SessionFile.open(directory / SESSIONS_FILE, identity)
        try:
            keyring = session_file.load(nick, identity)
            pins = (pin_file, known_peers)
            sessions = (session_file, keyring)
            # --no-log: the history lives in memory, for /history and /search, and goes with us.
            history_path = None if args.no_log else directory / HISTORY_FILE
            history = HistoryStore.open(history_path, identity, args.history_limit)
            try:
                return asyncio.run(
                    _chat(args, identity, pins, sessions, history, created, directory, interactive)
                )
            finally:
                history.close()
        finally:
            session_file.close()


def _find_relay(interactive: bool) -> Announced | None:
    """The relay announced on the LAN to join: the one found, or the one chosen on a
    terminal if several were; None (127.0.0.1, as before) if none was."""
    from e2echat.discovery import browse  # zeroconf, imported by those who browse

    if interactive:  # else a pause with no word of why; a script learns it from what follows
        print(f"Looking for a relay on the LAN ({BROWSE_SECONDS:g} s; --host skips this)...", flush=True)
    try:
        found = [relay for relay in asyncio.run(browse(BROWSE_SECONDS)) if relay.compatible]
    except OSError as exc:
        print_error(
            f"e2echat: could not look for a relay on the LAN ({exc.strerror or exc}); trying 127.0.0.1"
        )
        return None
    if not found:
        print_error(
            f"e2echat: no relay announced itself on the LAN; trying 127.0.0.1:{DEFAULT_PORT} "
            "(give --host and --port to join another)"
        )
        return None
    if len(found) == 1:
        print_error(f"e2echat: found a relay on the LAN: {_relay_line(found[0])}")
        return found[0]
    print_error("e2echat: several relays announced themselves on the LAN:")
    for number, relay in enumerate(found, 1):
        print_error(f"  {number}. {_relay_line(relay)}")
    if not interactive:
        raise UsageError(detail="which relay? give its --host and --port")
    while True:
        try:
            answer = input(f"Which relay? [1-{len(found)}] ").strip()
        except EOFError:
            raise UsageError(detail="no relay chosen") from None
        if answer.isascii() and answer.isdigit() and len(answer) < 4 and 1 <= int(answer) <= len(found):
            return found[int(answer) - 1]


def _relay_line(relay: Announced) -> str:
    """One announced relay as the user sees it. The name is anyone's text: neutralized."""
    line = f"{neutralize(relay.name)}  {relay.host}:{relay.port}  key {relay.fingerprint}"
    return line if relay.compatible else f"{line}  (protocol version {relay.version}, not this client's)"


def _run_relays(args: argparse.Namespace) -> int:
    from e2echat.discovery import browse  # zeroconf, imported by those who browse

    try:
        found = asyncio.run(browse(args.wait))
    except OSError as exc:
        raise NoRelayFound(detail=f"cannot look for relays on the LAN: {exc.strerror or exc}") from None
    if not found:
        raise NoRelayFound(
            detail=f"no relay announced itself on the LAN within {args.wait:g} s (a relay started with "
            "--no-announce, or on another network, is not seen)"
        )
    for relay in found:
        print(_relay_line(relay))
    return 0


def _profile(args: argparse.Namespace, interactive: bool) -> tuple[str, Path]:
    """Which nick, in which profile directory: --nick, else the profile's own (--home,
    $E2ECHAT_HOME, or the one used last), else asked for on a terminal."""
    nick = args.nick
    explicit = args.home or os.environ.get("E2ECHAT_HOME")
    remembered = Path(explicit).expanduser() if explicit else last_profile()
    if nick is None and remembered is not None:
        nick = load_settings(remembered).get("nick")
    if nick is None:
        if not interactive:
            raise UsageError(detail="which nick? give --nick NAME (no earlier profile was found)")
        try:
            nick = input("Your nick in the chat: ").strip()
        except EOFError:
            raise UsageError(detail="no nick given") from None
    if not is_valid_nick(nick):
        raise UsageError(detail=f"invalid nick {nick!r}: {NICK_RULE}")
    if args.nick is None and remembered is not None and not explicit:
        return nick, remembered  # the last profile, as it was
    return nick, profile_dir(nick, args.home)


def _passphrase(asked_for: bool, directory: Path) -> str | None:
    """The passphrase to unlock (or newly protect) the identity key, if there is one."""
    path = directory / IDENTITY_FILE
    from_environment = os.environ.get("E2ECHAT_PASSPHRASE")
    if from_environment:
        return from_environment
    protected = path.exists() and is_protected(path)
    if not protected and not asked_for:
        return None
    try:
        with open("/dev/tty"):  # getpass asks on the terminal, whatever stdin is
            pass
    except OSError:
        if protected:
            raise PassphraseRequired(path=path) from None
        raise UsageError(
            detail="--passphrase needs a terminal to ask on; or set E2ECHAT_PASSPHRASE"
        ) from None
    try:
        if protected:
            return getpass.getpass("Passphrase for your identity key: ")
        first = getpass.getpass("Choose a passphrase for your identity key: ")
        if first != getpass.getpass("The same passphrase again: "):
            raise UsageError(detail="the two passphrases differ; nothing was changed")
    except EOFError:
        raise UsageError(detail="no passphrase given") from None
    if not first:
        raise UsageError(detail="an empty passphrase protects nothing; nothing was changed")
    return first


def _named_profile(args: argparse.Namespace) -> Path:
    """The profile directory --nick or --home (or $E2ECHAT_HOME) names."""
    if args.nick is not None and not is_valid_nick(args.nick):
        raise UsageError(detail=f"invalid nick {args.nick!r}: {NICK_RULE}")
    if not (args.nick or args.home or os.environ.get("E2ECHAT_HOME")):
        raise UsageError(detail="which profile? give --nick NICK (or --home DIR)")
    return profile_dir(args.nick or "", args.home)


def _run_fingerprint(args: argparse.Namespace) -> int:
    directory = _named_profile(args)
    path = directory / IDENTITY_FILE
    if not path.exists():
        raise KeyFileError(path=path, detail="no identity yet; `e2echat connect` creates it on first use")
    print(fingerprint(stored_public_key(path)))
    return 0


async def _chat(
    args: argparse.Namespace,
    identity: PrivateKey,
    pins: tuple[PinFile, KnownPeers],
    sessions: tuple[SessionFile, Keyring],
    history: HistoryStore,
    created: bool,
    directory: Path,
    interactive: bool,
) -> int:
    profile = load_settings(directory)
    rooms = RoomList(profile.get(ROOMS, RoomList().names), profile.get(CURRENT_ROOM))
    chat_settings = profile.get(CHAT_SETTINGS, {})
    # (resuming: parts may come as soon as we are connected, before pump.resume_kept)
    transfers = Transfers(max_size=settings_from(chat_settings).max_file_bytes, resuming=True)
    try:
        (host, port), *fallbacks = parse_relays(args.host, args.port)
    except ValueError as exc:
        raise UsageError(detail=f"--host: {exc}") from None
    client, pinned = await join(
        host,
        port,
        args.nick,
        identity,
        pins,
        RelayPinFile(directory / KNOWN_RELAYS_FILE),
        sessions=sessions,
        password=_relay_password(args.password_file),
        accept=args.trust_relay_key,
        ask_password=_ask_password if interactive else None,
        hold_acks=True,  # mail is acknowledged once in the history (Chat)
        files=transfers,
        announced=args.announced,
        rooms=tuple(rooms.names),
        fallbacks=fallbacks,
    )
    downloads = Path(args.downloads).expanduser() if args.downloads else default_downloads()
    pump = FilePump(client, transfers, downloads, sending=directory / SENDING_DIRECTORY)
    await pump.resume_kept()  # transfers an earlier run left unfinished
    pump.start()
    save_settings(directory, args.nick, args.host, args.port)
    remember_last_profile(directory)
    kept = settings_from(chat_settings)
    # A flag wins over what the profile keeps, for this run; it is not kept itself.
    settings = kept.changed("bell", "off") if args.no_bell else kept
    keep = functools.partial(keep_setting, directory)
    # The rooms are kept with the rest of the profile: sent with every registration, they
    # survive reconnects, restarts, and a relay that forgot them.
    keep_ours = functools.partial(keep_rooms, directory)
    if interactive:
        chat = Chat(
            client,
            # asked at each line: /set colours changes it while the chat runs
            terminal_writer(color=lambda: chat.colours_on, current_room=lambda: chat.rooms.current),
            echo=True,
            multiline=True,
            bell=_ring,
            history=history,
            settings=settings,
            keep=keep,
            no_colour=bool(os.environ.get("NO_COLOR")),
            rooms=rooms,
            keep_rooms=keep_ours,
            files=pump,
        )
    else:
        chat = Chat(
            client,
            line_writer(json=args.json),
            json=args.json,
            history=history,
            settings=settings,
            keep=keep,
            rooms=rooms,
            keep_rooms=keep_ours,
            files=pump,
        )
    if created:
        chat.notice(f"created a new identity in {directory}")
    chat.notice(f"your key fingerprint: {fingerprint(identity.public_key)}")
    if pinned is not None:
        chat.notice(pinned)
    _remove_plaintext_input(directory / PLAINTEXT_INPUT_FILE, chat)
    _remove_plaintext_records(downloads, directory / SENDING_DIRECTORY, chat)
    try:
        if interactive:
            recall = None if args.no_history else input_history(history)
            await run_repl(chat, make_session(chat, recall))
        else:
            await run_line_mode(chat)
    finally:
        await pump.close()
        await client.close()
    # A script learns from the exit code whether everything it sent arrived.
    failed = chat.unsent or (not interactive and (chat.refused or chat.undelivered))
    return EXIT_NOT_SENT if failed else 0


#: in the profile: the files being sent, noted so that the next run goes on with them
SENDING_DIRECTORY = "sending"


def _remove_plaintext_input(path: Path, chat: Chat) -> None:
    """Before history.db, the prompt kept every line typed in ``path``, in plain text."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        chat.problem(f"could not remove {path}, which holds what you typed in plain text: {exc.strerror}")
        return
    chat.notice(f"removed {path}: it held what you typed, in plain text; the history is now sealed")


def _remove_plaintext_records(downloads: Path, sending: Path, chat: Chat) -> None:
    """The first files build kept its transfers' records in plain text (who, which file,
    its hash): those recognisably ours are deleted, and said so once (downloads.py)."""
    removed, problems = remove_plaintext_records(downloads, sending)
    for problem in problems:
        chat.problem(f"could not remove {problem}: it names a peer and a file in plain text")
    if removed:
        records = "record" if removed == 1 else "records"
        chat.notice(
            f"removed {removed} plain-text transfer {records} an earlier e2echat left in {downloads} "
            f"or {sending}: records are now sealed; the transfers they were for do not resume "
            "(their .part files stay, for you to delete)"
        )


def _run_export(args: argparse.Namespace) -> int:
    directory = _named_profile(args)
    path = directory / IDENTITY_FILE
    if not path.exists():
        raise KeyFileError(path=path, detail="no identity, so no history, in this profile")
    identity, _ = load_identity(path, _passphrase(False, directory))
    line = export_json if args.format == "jsonl" else export_text
    store = HistoryStore.open(directory / HISTORY_FILE, identity, read_only=True)
    damaged = 0
    written: list[str] = []
    try:
        for lines in store.everything():
            damaged += lines.damaged
            text = "".join(line(entry) + "\n" for entry in lines.entries)
            if args.output:
                written.append(text)
            else:
                sys.stdout.write(text)
    finally:
        store.close()
    if args.output:
        # Plain text of every conversation: readable by the owner alone, like the profile.
        write_private_file(Path(args.output).expanduser(), "".join(written).encode("utf-8"))
    else:
        sys.stdout.flush()
    if damaged:
        raise HistoryIncomplete(path=directory / HISTORY_FILE, detail=str(damaged))
    return 0


def _ring() -> None:
    print("\a", end="", flush=True)


def _ask_password() -> bytes:
    try:
        password = getpass.getpass("This relay needs a password: ")
    except EOFError:
        raise UsageError(detail="no password given") from None
    return _checked_password(password.encode("utf-8"))


def print_error(line: str) -> None:
    """The last word, on standard error. It may quote the relay (a refusal, why it hung
    up): on a terminal it is wrapped under its text like every other line, so that the
    terminal never wraps it itself and starts a row with the relay's words."""
    if sys.stderr.isatty():
        line = "\n".join(wrap_cells(line, shutil.get_terminal_size().columns - 1))
    print(line, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run = {
            "relay": _run_relay,
            "connect": _run_connect,
            "relays": _run_relays,
            "fingerprint": _run_fingerprint,
            "export": _run_export,
        }[args.command]
        code: int = run(args)
        return code
    except E2EChatError as exc:
        print_error(f"e2echat: {neutralize(str(exc))}")
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
