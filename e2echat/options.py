"""The command line's grammar: the argparse parser, its argument types and help texts.
What each command does is in cli.py."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import Any

from e2echat import __version__
from e2echat.crypto.identity import parse_fingerprint
from e2echat.relay.cluster.wire import DEFAULT_NAME as DEFAULT_CLUSTER_NAME
from e2echat.relay.limits import Limits
from e2echat.relay.server import DEFAULT_PORT
from e2echat.store.history import DEFAULT_LIMIT
from e2echat.wire.grammar import NICK_RULE

#: how long `e2echat relays` and `e2echat connect` listen for relays on the LAN: a responder
#: answers a query within about half a second (RFC 6762 §6), so 2 s is a few chances, and
#: short to wait
BROWSE_SECONDS = 2.0
#: `e2echat relays --wait` at most: an hour (a browse is a window of time, not a service)
MAX_BROWSE_SECONDS = 3600.0


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
    relay.add_argument(
        "--no-announce",
        action="store_true",
        help="do not announce the relay on the LAN by mDNS (by default it does, with its port and "
        "key fingerprint, so that `e2echat connect` and `e2echat relays` find it; a relay listening "
        "on 127.0.0.1 is announced to this machine alone)",
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

    mailboxes = relay.add_argument_group(
        "mailboxes (messages kept for people who are away; each limit logged once when hit)"
    )
    mailboxes.add_argument(
        "--store",
        metavar="FILE",
        help="keep known identities, prekey bundles, room memberships and mailboxes in this SQLite file, "
        "so that they survive a restart (default: in memory only, lost when the relay stops)",
    )
    for flag, unit, metavar, text in MAILBOX_FLAGS:
        shown = _shown(unit, getattr(defaults, flag))
        mailboxes.add_argument(
            "--" + flag.replace("_", "-"), default=shown, metavar=metavar, help=f"{text} (default: {shown})"
        )

    cluster = relay.add_argument_group(
        "cluster (several relays on one NATS server act as one relay; needs e2echat[cluster])"
    )
    cluster.add_argument(
        "--cluster",
        metavar="URL",
        help="join the relays on this NATS server (with JetStream), e.g. nats://10.0.0.5:4222; "
        "tls://HOST:PORT for TLS, nats://USER:PASSWORD@HOST:PORT for a password",
    )
    cluster.add_argument(
        "--cluster-name",
        default=DEFAULT_CLUSTER_NAME,
        metavar="NAME",
        help=f"relays with the same name on that server are one relay (default: {DEFAULT_CLUSTER_NAME})",
    )
    cluster.add_argument(
        "--cluster-creds", metavar="FILE", help="NATS user credentials file (JWT and NKey seed) for the link"
    )
    cluster.add_argument(
        "--cluster-ca", metavar="FILE", help="check the NATS server's TLS certificate against this CA file"
    )
    cluster.add_argument(
        "--cluster-replicas",
        type=int,
        default=1,
        metavar="N",
        help="NATS servers that keep each copy of the cluster's identities, bundles and mailboxes "
        "(JetStream replicas, 1-5; default: 1)",
    )

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
        "--host",
        help="the relay's address (default: the one this profile used last; else the relay announced "
        "on the LAN, if there is exactly one, with its key pinned as announced; else 127.0.0.1). "
        "A cluster's relays as A[:PORT],B[:PORT]: tried in order, and the next when one goes",
    )
    connect.add_argument(
        "--port", type=_port, help=f"the relay's port (default: this profile's last, else {DEFAULT_PORT})"
    )
    connect.add_argument("--json", action="store_true", help="print one JSON object per event (for scripts)")
    connect.add_argument("--no-bell", action="store_true", help="no terminal bell on private messages")
    connect.add_argument(
        "--no-history",
        action="store_true",
        help="Up recalls only what you typed in this session, not the messages you sent before",
    )
    connect.add_argument(
        "--no-log",
        action="store_true",
        help="keep no history on disk: /history and /search see this session alone",
    )
    connect.add_argument(
        "--history-limit",
        type=_positive(int),
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"keep the newest N lines of history; older ones are deleted (default: {DEFAULT_LIMIT})",
    )
    connect.add_argument(
        "--downloads",
        metavar="DIR",
        help="where files received are saved (default: $XDG_DOWNLOAD_DIR/e2echat, else ~/Downloads/e2echat)",
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

    relays = commands.add_parser(
        "relays",
        help="list the relays announced on the LAN",
        description="Listen for relays announcing themselves on the LAN (mDNS) and list each: its "
        "name, address and key fingerprint. Anyone on the LAN can announce anything: compare the "
        "fingerprint with the one the relay's owner gives you. Exit code 1 if none is found.",
    )
    relays.add_argument(
        "--wait",
        type=_browse_seconds,
        default=BROWSE_SECONDS,
        metavar="SECONDS",
        help=f"how long to listen (default: {BROWSE_SECONDS:g})",
    )

    show = commands.add_parser(
        "fingerprint",
        help="print your identity key's fingerprint",
        description="Print the fingerprint of your identity key, to compare with what others see.",
    )
    show.add_argument("--nick", help="whose profile (default: the one --home or $E2ECHAT_HOME names)")
    show.add_argument("--home", metavar="DIR", help=HOME_HELP)

    export = commands.add_parser(
        "export",
        help="write your history out, readable",
        description="Write the history kept in your profile (every message shown, sealed in "
        "history.db) as JSON lines or text. Asks for the passphrase if your identity key has one. "
        "What it writes is in plain text: keep it somewhere safe.",
    )
    export.add_argument("--nick", help="whose profile (default: the one --home or $E2ECHAT_HOME names)")
    export.add_argument("--home", metavar="DIR", help=HOME_HELP)
    export.add_argument(
        "--format",
        choices=["jsonl", "txt"],
        default="jsonl",
        help="one JSON object a line, or text (default: jsonl)",
    )
    export.add_argument(
        "--output", metavar="FILE", help="write to FILE (mode 0600) instead of standard output"
    )
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
    ("max_rooms", int, "N", "rooms on the relay at once (a join that would make one more is refused)"),
    ("rooms_per_address", int, "N", "rooms made from one address that still exist (an IPv6 /64 is one)"),
]

#: the mailbox limits: (field of Limits, kind of value, metavar, help); given as text and
#: read by ``mailbox_limits``, so that a bad value is one line, not argparse's usage
MAILBOX_FLAGS: list[tuple[str, str, str, str]] = [
    ("mailbox_messages", "count", "N", "messages kept for one person who is away"),
    ("mailbox_bytes", "size", "SIZE", "bytes kept for one person who is away, e.g. 16MiB, 500KiB"),
    ("mailbox_ttl", "duration", "TIME", "how long a message waits before its sender is told it expired: "
     "seconds, or with s, m, h or d, e.g. 7d, 12h"),
    ("mailbox_total", "size", "SIZE", "bytes kept in all mailboxes together, e.g. 1GiB"),
]  # fmt: skip

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"\s*([0-9]+)\s*(?:([kmgt]?)(?:i?b)?)\s*", re.IGNORECASE)
_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes: a whole number, with an optional unit K, M, G or T (powers of 1024; KiB,
    KB and K are all 1024). Raises ValueError, with the text to show."""
    match = _SIZE.fullmatch(text)
    if match is None or int(match[1]) <= 0:
        raise ValueError(
            f"{text!r} is not a size (a whole number of bytes above 0, e.g. 500KiB, 16MiB, 1GiB)"
        )
    return int(match[1]) * _UNITS[match[2].lower()]


def parse_duration(text: str) -> float:
    """Seconds: a number, with an optional unit s, m, h or d. Raises ValueError."""
    match = _DURATION.fullmatch(text)
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"{text!r} is not a time (a number above 0 with s, m, h or d, e.g. 7d, 12h, 90s)")
    return float(match[1]) * _SECONDS[match[2].lower()]


def parse_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{text!r} is not a whole number above 0")
    return value


def mailbox_limits(args: argparse.Namespace) -> dict[str, Any]:
    """The mailbox limits given on the command line, as fields of ``Limits``. Raises
    ValueError naming the option with a bad value."""
    parsers: dict[str, Callable[[str], int | float]] = {
        "count": parse_count,
        "size": parse_size,
        "duration": parse_duration,
    }
    limits: dict[str, Any] = {}
    for flag, kind, _, _ in MAILBOX_FLAGS:
        try:
            limits[flag] = parsers[kind](getattr(args, flag))
        except ValueError as exc:
            raise ValueError(f"--{flag.replace('_', '-')}: {exc}") from None
    return limits


def _shown(kind: str, value: float) -> str:
    """A limit's default as it would be given on the command line."""
    if kind == "size":
        return _size_text(int(value))
    return _duration_text(value) if kind == "duration" else str(value)


def _size_text(size: int) -> str:
    for unit, name in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if size % unit == 0:
            return f"{size // unit}{name}"
    return str(size)


def _duration_text(seconds: float) -> str:
    for unit, name in ((86400.0, "d"), (3600.0, "h"), (60.0, "m")):
        if seconds % unit == 0:
            return f"{seconds / unit:g}{name}"
    return f"{seconds:g}s"


HOME_HELP = (
    "profile directory holding your identity key and known peers "
    "(default: $E2ECHAT_HOME, else $XDG_DATA_HOME/e2echat/NICK)"
)


def _fingerprint(text: str) -> str:
    parsed = parse_fingerprint(text)
    if parsed is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a key fingerprint (32 hex digits)")
    return parsed


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be a number more than 0")
        return value

    return parse


def _browse_seconds(text: str) -> float:
    value = float(_positive(float)(text))
    if value > MAX_BROWSE_SECONDS:
        raise argparse.ArgumentTypeError(f"{text}: at most {MAX_BROWSE_SECONDS:g} seconds")
    return value
