"""Finding the relay on the LAN: the relay announces itself by mDNS/DNS-SD
(``_e2echat._tcp``, its key's fingerprint in the TXT record), and clients browse for it.

The one module that imports zeroconf: the relay and the command line import this module
only when they announce or browse, so nothing else needs zeroconf to be imported.

An announcement is a hint, not a proof: anyone on the LAN can announce anything. What it
is good for is the fingerprint, which the client then requires of the relay's key on first
contact (a pin, once made, always wins over an announcement).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass

from zeroconf import DNSQuestionType, InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from e2echat.crypto.identity import parse_fingerprint
from e2echat.errors import UsageError
from e2echat.wire.grammar import PROTOCOL_VERSION

log = logging.getLogger("e2echat.discovery")

SERVICE_TYPE = "_e2echat._tcp.local."
#: names another service type (``_NAME._tcp.local.``) to announce and browse: keeps a
#: test run's relays, or a group's own, apart from every other e2echat relay on the LAN
SERVICE_ENV = "E2ECHAT_MDNS_SERVICE"
_VERSION = re.compile(r"[0-9]{1,9}")  # ASCII digits: "²" is a digit to str.isdigit, not to int
_SERVICE_RULE = re.compile(r"_[a-z0-9](?:[a-z0-9-]{0,13}[a-z0-9])?\._tcp\.local\.")
#: for a found service's records, when they did not come with its name (they usually do)
_RESOLVE_MS = 1000
#: a goodbye is a courtesy to browsers' caches: a relay that stops never waits longer for it
_GOODBYE_SECONDS = 1.0
_LOOPBACK = "127.0.0.1"
#: how long a relay listens to the names already announced before it probes for its own:
#: zeroconf renames ours ("vm-2") only if its cache holds the other, and probing alone does
#: not fill it (two relays on one machine both took one name without this)
_LOOK_SECONDS = 1.0


@dataclass(frozen=True)
class Announced:
    """A relay as its announcement describes it. Every field is what someone on the LAN
    said: ``name`` is any text (neutralize it before printing), and ``fingerprint`` is
    only a claim until the relay's key is checked against it."""

    name: str
    host: str
    port: int
    fingerprint: str
    version: int

    @property
    def compatible(self) -> bool:
        """Whether it speaks this client's protocol version."""
        return self.version == PROTOCOL_VERSION


@dataclass(frozen=True)
class Scope:
    """Where an announcement is made: ``interfaces`` (None: every one) and the IPv4
    addresses it gives for the relay."""

    interfaces: list[str] | None
    addresses: list[str]


def announce_scope(host: str, lan_addresses: Callable[[], list[str]]) -> Scope | None:
    """Where a relay listening on ``host`` is announced, or None if it is not.

    Listening on every address ("" or 0.0.0.0): on every interface, with the LAN
    addresses. On a loopback address: on loopback alone, as only this machine can reach
    it. On one address: on that address's interface. On IPv6 alone ("::" or an IPv6
    address; asyncio binds "::" IPv6-only): not at all, as announcements are IPv4.
    May resolve ``host``: call it off the event loop.
    """
    if host in ("", "0.0.0.0"):
        addresses = lan_addresses()
        return Scope(None, addresses) if addresses else Scope([_LOOPBACK], [_LOOPBACK])
    try:
        ips = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            ips = [
                ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(host, None, socket.AF_INET)
            ]
        except OSError:
            return None
    ours = sorted({str(ip) for ip in ips if ip.version == 4})
    if not ours:
        return None
    if all(ipaddress.ip_address(address).is_loopback for address in ours):
        return Scope([_LOOPBACK], ours)
    own = [address for address in ours if not ipaddress.ip_address(address).is_loopback]
    return Scope(own, own)


def service_type() -> str:
    """The service type relays announce and clients browse: ``SERVICE_TYPE``, unless
    ``E2ECHAT_MDNS_SERVICE`` names another (a DNS-SD service name, 1-15 characters)."""
    chosen = os.environ.get(SERVICE_ENV)
    if not chosen:
        return SERVICE_TYPE
    if not _SERVICE_RULE.fullmatch(chosen):
        raise UsageError(detail=f"{SERVICE_ENV} must look like _name._tcp.local. (name: 1-15 of a-z, 0-9, -)")
    return chosen


def _host_label() -> str:
    """This machine's name as one DNS label (letters, digits, hyphens)."""
    label = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname().split(".")[0]).strip("-")
    return label[:63] or "e2echat"


async def _names_seen(zeroconf: AsyncZeroconf, service: str, seconds: float) -> set[str]:
    """The names of ``service`` announced within ``seconds`` (and not withdrawn)."""
    names: set[str] = set()

    def seen(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            names.discard(name)
        else:
            names.add(name)

    # Answers by multicast (QM), not unicast (QU): a unicast answer goes to port 5353 on
    # this machine, where another responder (avahi, a relay) may be the socket that gets it.
    browser = AsyncServiceBrowser(
        zeroconf.zeroconf, service, handlers=[seen], question_type=DNSQuestionType.QM
    )
    try:
        await asyncio.sleep(seconds)  # a browse is a time window, not a wait for an event
    finally:
        await browser.async_cancel()
    return names


class Announcer:
    """The relay's announcement: registered once it listens, withdrawn when it stops.

    Announcing must never stop the relay: any failure (no multicast, no interface) is
    one warning line, and the relay serves on unannounced.
    """

    def __init__(
        self, host: str, port: int, fingerprint: str, lan_addresses: Callable[[], list[str]]
    ) -> None:
        self._host = host
        self._port = port
        self._fingerprint = fingerprint
        self._lan_addresses = lan_addresses
        self._zeroconf: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._task: asyncio.Task[None] | None = None
        #: the instance name it was registered under (renamed if taken), once it is
        self.name: str | None = None

    def start(self) -> None:
        """Register in the background: probing for the name takes a second or two, and the
        relay serves meanwhile."""
        self._task = asyncio.create_task(self.register())

    async def register(self) -> None:
        try:
            service = service_type()
            scope = await asyncio.to_thread(announce_scope, self._host, self._lan_addresses)
            if scope is None:
                log.info("not announced on the LAN: it listens on %s, and announcements are IPv4", self._host)
                return
            interfaces = InterfaceChoice.All if scope.interfaces is None else scope.interfaces
            self._zeroconf = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
            label = _host_label()
            await _names_seen(self._zeroconf, service, _LOOK_SECONDS)  # into its cache, for the rename
            info = AsyncServiceInfo(
                service,
                f"{label}.{service}",
                port=self._port,
                addresses=[socket.inet_aton(address) for address in scope.addresses],
                properties={"fp": self._fingerprint, "v": str(PROTOCOL_VERSION)},
                # Its own host name: relays sharing one would have their addresses merged.
                server=f"{label}-e2echat-{self._port}.local.",
            )
            await (await self._zeroconf.async_register_service(info, allow_name_change=True))
            self._info = info
            self.name = info.name.removesuffix("." + service)
            where = (
                "this machine only (it listens on loopback)" if scope.interfaces == [_LOOPBACK] else "the LAN"
            )
            log.info("announced as %r on %s", self.name, where)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # zeroconf's errors, OSError: announcing must not stop the relay
            log.warning(
                "not announced on the LAN (mDNS): %s; the relay serves on", str(exc) or type(exc).__name__
            )
            await self._close()

    async def stop(self) -> None:
        """Withdraw the announcement (bounded), whether or not it was made yet."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._zeroconf is not None and self._info is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._zeroconf.async_unregister_service(self._info), _GOODBYE_SECONDS)
        await self._close()

    async def _close(self) -> None:
        zeroconf, self._zeroconf, self._info = self._zeroconf, None, None
        if zeroconf is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(zeroconf.async_close(), _GOODBYE_SECONDS)


async def browse(seconds: float, *, interfaces: list[str] | None = None) -> list[Announced]:
    """The relays announced on the LAN (``interfaces``; default: every one) within
    ``seconds``, sorted by name. Announcements without a well-formed fingerprint, port
    or IPv4 address are left out. Raises OSError if multicast cannot be used at all."""
    service = service_type()
    zeroconf = AsyncZeroconf(
        interfaces=InterfaceChoice.All if interfaces is None else interfaces, ip_version=IPVersion.V4Only
    )
    try:
        names = sorted(await _names_seen(zeroconf, service, seconds))
        infos = [info for name in names if (info := _info(service, name)) is not None]
        # Their records usually came with their names: then this asks nothing.
        await asyncio.gather(
            *(info.async_request(zeroconf.zeroconf, _RESOLVE_MS, DNSQuestionType.QM) for info in infos)
        )
    finally:
        await zeroconf.async_close()
    found = [_announced(info) for info in infos]
    return [relay for relay in found if relay is not None]


def _info(service: str, name: str) -> AsyncServiceInfo | None:
    """What to ask of a name heard on the LAN; None for one zeroconf will not take (anyone
    can send any name: one with control characters, or too long, is left out)."""
    try:
        return AsyncServiceInfo(service, name)
    except Exception:  # zeroconf's BadTypeInNameException and the like
        log.debug("ignored an announcement with a malformed name: %r", name)
        return None


def _announced(info: AsyncServiceInfo) -> Announced | None:
    """The relay an announcement describes; None for one without a usable address, port,
    fingerprint or version (its records are anyone's: nothing in them may raise)."""
    try:
        addresses = info.parsed_addresses(IPVersion.V4Only)
        properties = info.properties
        claimed = parse_fingerprint(_text(properties.get(b"fp")))
        version = _text(properties.get(b"v"))
        port = info.port
    except Exception:
        log.debug("ignored an announcement whose records do not parse: %r", info.name)
        return None
    if not addresses or not port or claimed is None or not _VERSION.fullmatch(version):
        log.debug("ignored an announcement without a usable address, port or fingerprint: %r", info.name)
        return None
    name = info.name.removesuffix("." + info.type)
    return Announced(name, addresses[0], port, claimed, int(version))


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value else ""
