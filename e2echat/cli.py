"""The command line: argparse, and the one place that turns errors into messages and
exit codes. Nothing below this module prints a traceback at a user."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import io
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from nacl.public import PrivateKey

from e2echat import __version__
from e2echat.client.relays import parse_fingerprint
from e2echat.client.trust import KnownPeers
from e2echat.crypto.identity import fingerprint
from e2echat.errors import (
    E2EChatError,
    KeyFileError,
    PassphraseRequired,
    UsageError,
)
from e2echat.relay.limits import Limits
from e2echat.relay.server import DEFAULT_PORT, run_relay
from e2echat.store.files import exclusive
from e2echat.store.keyfile import (
    IDENTITY_FILE,
    is_protected,
    load_or_create_identity,
    load_or_create_relay_key,
    stored_public_key,
)
from e2echat.store.pins import KNOWN_PEERS_FILE, PinFile
from e2echat.store.profiles import (
    HISTORY_FILE,
    last_profile,
    load_settings,
    profile_dir,
    relay_key_path,
    remember_last_profile,
    save_settings,
)
from e2echat.store.relays import KNOWN_RELAYS_FILE, RelayPinFile
from e2echat.ui.cells import neutralize
from e2echat.ui.chat import Chat
from e2echat.ui.joining import join
from e2echat.ui.linemode import print_text, run_line_mode
from e2echat.ui.repl import history_file, make_session, run_repl, terminal_writer
from e2echat.wire.grammar import MAX_PASSWORD, NICK_RULE, is_valid_nick

EXIT_INTERRUPTED = 130  # the shell convention for "stopped by Ctrl+C"
# As for a lost relay: something typed never left this machine (in line mode also: a line
# was refused, or a message was not delivered to everyone it was meant for).
EXIT_NOT_SENT = 4


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="e2echat",
        description="End-to-end encrypted chat through a relay you do not have to trust.",
        epilog="Start a relay on one machine, then everyone runs `e2echat connect`.",
    )
    parser.add_argument("--version", action="version", version=f"e2echat {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    relay = commands.add_parser(
        "relay",
        help="run the relay that forwards encrypted messages",
        description="Run the relay. It forwards ciphertext and keeps a directory of who is "
        "online; it never holds a key that can read a message.",
    )
    relay.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all, 0.0.0.0)")
    relay.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"TCP port (default: {DEFAULT_PORT})")
    relay.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="how much the relay logs to stderr (default: info)",
    )
    relay.add_argument("--quiet", action="store_true", help="log only warnings and errors")
    relay.add_argument(
        "--password-file",
        metavar="FILE",
        help="require this password (the file's first line) from clients; or set E2ECHAT_RELAY_PASSWORD",
    )
    relay.add_argument(
        "--key",
        metavar="FILE",
        help="the relay's long-term key, made there on first start (mode 0600; default: "
        "$XDG_DATA_HOME/e2echat/relay/relay.key). Clients pin it per address and refuse a relay "
        "whose key changed: keep this file, and a restarted relay is the same relay to them",
    )
    defaults = Limits()
    limits = relay.add_argument_group("limits (each logged in one line when a client hits it)")
    for field, kind, metavar, text in LIMIT_FLAGS:
        default = getattr(defaults, field)
        limits.add_argument(
            "--" + field.replace("_", "-"),
            type=_positive(kind),
            default=default,
            metavar=metavar,
            help=f"{text} (default: {default if kind is int else format(default, 'g')})",
        )
    relay.set_defaults(run=_run_relay)

    connect = commands.add_parser(
        "connect",
        help="join a relay and chat",
        description="Join a relay and chat. A plain line goes to everyone online; "
        "/msg NICK TEXT to one person; /who, /help, /quit. When standard input is not a "
        "terminal, lines are read from it and events are printed one per line.",
    )
    connect.add_argument(
        "--nick", help=f"your name in the chat ({NICK_RULE}); default: the profile you used last, else asked"
    )
    connect.add_argument(
        "--host", help="the relay's address (default: the one this profile used last, else 127.0.0.1)"
    )
    connect.add_argument(
        "--port", type=_port, help=f"the relay's port (default: this profile's last, else {DEFAULT_PORT})"
    )
    connect.add_argument("--json", action="store_true", help="print one JSON object per event (for scripts)")
    connect.add_argument("--no-bell", action="store_true", help="no terminal bell on private messages")
    connect.add_argument(
        "--no-history", action="store_true", help="do not keep what you type in the profile's history file"
    )
    connect.add_argument("--home", metavar="DIR", help=HOME_HELP)
    connect.add_argument(
        "--passphrase",
        action="store_true",
        help="protect your identity key with a passphrase (asked for on the terminal; "
        "or set E2ECHAT_PASSPHRASE). A protected key always needs it.",
    )
    connect.add_argument(
        "--password-file",
        metavar="FILE",
        help="the relay's password (the file's first line), if it has one; or set "
        "E2ECHAT_RELAY_PASSWORD; asked for on the terminal otherwise",
    )
    connect.add_argument(
        "--trust-relay-key",
        metavar="FINGERPRINT",
        type=_fingerprint,
        help="answer only a relay whose key has this fingerprint (as `e2echat relay` prints it), and "
        "pin it. The first time, your client pins whatever key the relay shows; if it later "
        "shows another, the client sends it nothing (exit code 6) unless you confirm on the "
        "terminal or give the new key's fingerprint here",
    )
    connect.set_defaults(run=_run_connect)

    show = commands.add_parser(
        "fingerprint",
        help="print your identity key's fingerprint",
        description="Print the fingerprint of your identity key, to compare with what others see.",
    )
    show.add_argument("--nick", help="whose profile (default: the one --home or $E2ECHAT_HOME names)")
    show.add_argument("--home", metavar="DIR", help=HOME_HELP)
    show.set_defaults(run=_run_fingerprint)
    return parser


#: the relay's limits on the command line: (field of Limits, type, metavar, help)
LIMIT_FLAGS: list[tuple[str, type[int] | type[float], str, str]] = [
    ("max_connections", int, "N", "connections at once"),
    ("max_frame", int, "BYTES", "largest frame accepted"),
    ("handshake_timeout", float, "SECONDS", "time to register"),
    ("idle_timeout", float, "SECONDS", "close a connection that sends no whole frame this long"),
    ("rate", float, "PER_SECOND", "messages a second per connection"),
    ("burst", float, "N", "messages allowed at once above the rate"),
    ("byte_rate", int, "BYTES", "bytes a second per connection (frames over it are refused unread)"),
    ("byte_burst", int, "BYTES", "bytes allowed at once above the byte rate"),
    (
        "write_buffer",
        int,
        "BYTES",
        "drop a client that stops reading once this much waits for it; past a quarter of it, "
        "messages to it are refused and their senders told",
    ),
    ("stall_timeout", float, "SECONDS", "drop a client that stays that far behind in reading this long"),
    ("partial_frames", int, "BYTES", "bytes of unfinished frames held in all; over it, the oldest is closed"),
    ("connections_per_address", int, "N", "connections at once from one address (an IPv6 /64 is one)"),
    ("connect_rate", float, "PER_SECOND", "new connections a second from one address"),
    ("connect_burst", float, "N", "new connections allowed at once from one address above that rate"),
]

HOME_HELP = (
    "profile directory holding your identity key and known peers "
    "(default: $E2ECHAT_HOME, else $XDG_DATA_HOME/e2echat/NICK)"
)


def _run_relay(args: argparse.Namespace) -> int:
    level = "WARNING" if args.quiet else args.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = Limits(**{field: getattr(args, field) for field, *_ in LIMIT_FLAGS})
    password = _relay_password(args.password_file)
    say = (lambda text: None) if args.quiet else (lambda text: print(text, flush=True))
    key_path = Path(args.key).expanduser() if args.key else relay_key_path()
    key, created = load_or_create_relay_key(key_path)
    note = (
        f"Its key is in {key_path}{' (made just now)' if created else ''}: keep that file, and "
        "clients know the relay again after a restart."
    )
    serve = run_relay(args.host, args.port, say, limits=limits, password=password, key=key, key_note=note)
    asyncio.run(serve)
    return 0


def _fingerprint(text: str) -> str:
    parsed = parse_fingerprint(text)
    if parsed is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a key fingerprint (32 hex digits)")
    return parsed


def _relay_password(path: str | None) -> bytes | None:
    """The relay password from --password-file, else E2ECHAT_RELAY_PASSWORD, else none."""
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                line = handle.readline().rstrip("\r\n")
        except OSError as exc:
            raise UsageError(detail=f"cannot read the password file {path}: {exc.strerror}") from None
        if not line:
            raise UsageError(detail=f"the password file {path} is empty")
        return _checked_password(line.encode("utf-8"))
    from_environment = os.environ.get("E2ECHAT_RELAY_PASSWORD")
    return _checked_password(from_environment.encode("utf-8")) if from_environment else None


def _checked_password(password: bytes) -> bytes:
    if len(password) > MAX_PASSWORD:
        raise UsageError(detail=f"the relay password is longer than {MAX_PASSWORD} bytes")
    return password


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be more than 0")
        return value

    return parse


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
    args.host = args.host or settings.get("host") or "127.0.0.1"
    args.port = args.port or settings.get("port") or DEFAULT_PORT
    args.nick = nick
    logging.basicConfig(level=logging.WARNING, format="e2echat: %(message)s")
    with exclusive(directory):
        identity, created = load_or_create_identity(directory, _passphrase(args.passphrase, directory))
        pin_file = PinFile(directory / KNOWN_PEERS_FILE)
        known_peers = pin_file.load()
        return asyncio.run(_chat(args, identity, (pin_file, known_peers), created, directory, interactive))


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


def _run_fingerprint(args: argparse.Namespace) -> int:
    if args.nick is not None and not is_valid_nick(args.nick):
        raise UsageError(detail=f"invalid nick {args.nick!r}: {NICK_RULE}")
    if not (args.nick or args.home or os.environ.get("E2ECHAT_HOME")):
        raise UsageError(detail="which profile? give --nick NICK (or --home DIR)")
    directory = profile_dir(args.nick or "", args.home)
    path = directory / IDENTITY_FILE
    if not path.exists():
        raise KeyFileError(path=path, detail="no identity yet; `e2echat connect` creates it on first use")
    print(fingerprint(stored_public_key(path)))
    return 0


async def _chat(
    args: argparse.Namespace,
    identity: PrivateKey,
    pins: tuple[PinFile, KnownPeers],
    created: bool,
    directory: Path,
    interactive: bool,
) -> int:
    client, pinned = await join(
        args.host,
        args.port,
        args.nick,
        identity,
        pins,
        RelayPinFile(directory / KNOWN_RELAYS_FILE),
        password=_relay_password(args.password_file),
        accept=args.trust_relay_key,
        ask_password=_ask_password if interactive else None,
    )
    save_settings(directory, args.nick, args.host, args.port)
    remember_last_profile(directory)
    color = interactive and not os.environ.get("NO_COLOR")
    if interactive:
        chat = Chat(
            client,
            terminal_writer(color=color),
            echo=True,
            multiline=True,
            bell=None if args.no_bell else _ring,
        )
    else:
        chat = Chat(client, print_text, json=args.json)
    if created:
        chat.notice(f"created a new identity in {directory}")
    chat.notice(f"your key fingerprint: {fingerprint(identity.public_key)}")
    if pinned is not None:
        chat.notice(pinned)
    try:
        if interactive:
            history = None if args.no_history else history_file(directory / HISTORY_FILE)
            await run_repl(chat, make_session(chat, history))
        else:
            await run_line_mode(chat)
    finally:
        await client.close()
    # A script learns from the exit code whether everything it sent arrived.
    failed = chat.unsent or (not interactive and (chat.refused or chat.undelivered))
    return EXIT_NOT_SENT if failed else 0


def _ring() -> None:
    print("\a", end="", flush=True)


def _ask_password() -> bytes:
    try:
        password = getpass.getpass("This relay needs a password: ")
    except EOFError:
        raise UsageError(detail="no password given") from None
    return _checked_password(password.encode("utf-8"))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except E2EChatError as exc:
        print(f"e2echat: {neutralize(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
