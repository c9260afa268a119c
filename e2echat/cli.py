"""The command line: argparse, and the one place that turns errors into messages and
exit codes. Nothing below this module prints a traceback at a user."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from nacl.public import PrivateKey

from e2echat import __version__
from e2echat.chat import Chat
from e2echat.client import Connection
from e2echat.errors import E2EChatError, KeyFileError, PassphraseRequired, UsageError
from e2echat.keys import (
    IDENTITY_FILE,
    fingerprint,
    is_protected,
    load_or_create_identity,
    profile_dir,
    stored_public_key,
)
from e2echat.messages import NICK_RULE, is_valid_nick
from e2echat.relay import DEFAULT_PORT, run_relay
from e2echat.repl import run_line_mode, run_repl
from e2echat.trust import KNOWN_PEERS_FILE, KnownPeers

EXIT_INTERRUPTED = 130  # the shell convention for "stopped by Ctrl+C"


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
    relay.set_defaults(run=_run_relay)

    connect = commands.add_parser(
        "connect",
        help="join a relay and chat",
        description="Join a relay and chat. A plain line goes to everyone online; "
        "/msg NICK TEXT to one person; /who, /help, /quit. When standard input is not a "
        "terminal, lines are read from it and events are printed one per line.",
    )
    connect.add_argument("--nick", required=True, help=f"your name in the chat ({NICK_RULE})")
    connect.add_argument("--host", default="127.0.0.1", help="the relay's address (default: 127.0.0.1)")
    connect.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"the relay's port (default: {DEFAULT_PORT})"
    )
    connect.add_argument("--home", metavar="DIR", help=HOME_HELP)
    connect.add_argument(
        "--passphrase",
        action="store_true",
        help="protect your identity key with a passphrase (asked for on the terminal; "
        "or set E2ECHAT_PASSPHRASE). A protected key always needs it.",
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


HOME_HELP = (
    "profile directory holding your identity key and known peers "
    "(default: $E2ECHAT_HOME, else $XDG_DATA_HOME/e2echat/NICK)"
)


def _run_relay(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run_relay(args.host, args.port, say=lambda text: print(text, flush=True)))
    return 0


def _run_connect(args: argparse.Namespace) -> int:
    if not is_valid_nick(args.nick):
        raise UsageError(detail=f"invalid nick {args.nick!r}: {NICK_RULE}")
    if args.port == 0:
        raise UsageError(detail="--port must be the relay's port (1-65535)")
    logging.basicConfig(level=logging.WARNING, format="e2echat: %(message)s")
    directory = profile_dir(args.nick, args.home)
    identity, created = load_or_create_identity(directory, _passphrase(args.passphrase, directory))
    known_peers = KnownPeers(directory / KNOWN_PEERS_FILE)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    return asyncio.run(_chat(args, identity, known_peers, created, directory, interactive))


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
    known_peers: KnownPeers,
    created: bool,
    directory: Path,
    interactive: bool,
) -> int:
    connection = Connection(args.host, args.port, args.nick, identity, known_peers)
    await connection.open()
    chat = Chat(connection, write=lambda text: print(text, flush=True))
    if created:
        chat.notice(f"created a new identity in {directory}")
    chat.notice(f"your key fingerprint: {fingerprint(identity.public_key)}")
    try:
        if interactive:
            await run_repl(chat)
        else:
            await run_line_mode(chat)
    finally:
        await connection.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except E2EChatError as exc:
        print(f"e2echat: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
