"""The command line: argparse, and the one place that turns errors into messages and
exit codes. Nothing below this module prints a traceback at a user."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from nacl.public import PrivateKey

from e2echat import __version__
from e2echat.chat import Chat
from e2echat.client import Connection
from e2echat.errors import E2EChatError, UsageError
from e2echat.keys import fingerprint, load_or_create_identity, profile_dir
from e2echat.messages import NICK_RULE, is_valid_nick
from e2echat.relay import DEFAULT_PORT, run_relay
from e2echat.repl import run_line_mode, run_repl

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
    connect.add_argument(
        "--home",
        metavar="DIR",
        help="profile directory holding your identity key (default: $E2ECHAT_HOME, "
        "else $XDG_DATA_HOME/e2echat/NICK)",
    )
    connect.set_defaults(run=_run_connect)
    return parser


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
    identity, created = load_or_create_identity(directory)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    return asyncio.run(_chat(args, identity, created, directory, interactive))


async def _chat(
    args: argparse.Namespace, identity: PrivateKey, created: bool, directory: object, interactive: bool
) -> int:
    connection = Connection(args.host, args.port, args.nick, identity)
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
