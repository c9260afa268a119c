"""One exception hierarchy for e2echat.

Every error a user can see is a class whose docstring is the text shown, with
``{placeholders}`` filled from the error's attributes. Each class takes its attributes
as typed keyword arguments, so a caller reads ``exc.code``, not a string-keyed dict.
The CLI is the one place that turns these into a message and an exit code.
"""

from __future__ import annotations

from pathlib import PurePath


class E2EChatError(Exception):
    """e2echat failed: {detail}"""

    exit_code = 1

    def __init__(self, *, detail: str = "") -> None:
        self.detail = detail
        super().__init__(self.user_message())

    def user_message(self) -> str:
        template = " ".join((self.__doc__ or "{detail}").split())
        return template.format_map(vars(self))


# -- the peer (relay or client on the other end of a socket) misbehaved ---------------


class RemoteProtocolError(E2EChatError):
    """protocol error: {detail}"""


class FrameTooLarge(RemoteProtocolError):
    """frame of {size} bytes exceeds the limit of {limit} bytes"""

    def __init__(self, *, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__()


# -- we misused an API: a bug in e2echat or in a caller ---------------------------------


class LocalProtocolError(E2EChatError):
    """internal error: {detail}"""


# -- crypto: a message that does not authenticate ---------------------------------------


class DecryptionError(E2EChatError):
    """a message from {peer} failed authentication: {detail}"""

    def __init__(self, *, peer: str, detail: str) -> None:
        self.peer = peer
        super().__init__(detail=detail)


class ReplayError(DecryptionError):
    """a message from {peer} was a replay of message #{counter} and was ignored"""

    def __init__(self, *, peer: str, counter: int) -> None:
        self.counter = counter
        super().__init__(peer=peer, detail=f"replay of message #{counter}")


class SkippedTooMany(DecryptionError):
    """a message from {peer} comes after {skipped} messages that never arrived, more than
    the {limit} e2echat will wait for: it cannot be read"""

    def __init__(self, *, peer: str, skipped: int, limit: int) -> None:
        self.skipped = skipped
        self.limit = limit
        super().__init__(peer=peer, detail=f"{skipped} messages skipped, over the limit of {limit}")


class BadRatchetState(E2EChatError):
    """the saved session with {peer} is damaged and cannot be used ({detail})"""

    def __init__(self, *, peer: str, detail: str) -> None:
        self.peer = peer
        super().__init__(detail=detail)


class BadPrekeyBundle(RemoteProtocolError):
    """the keys the relay gave for {nick} are unusable ({detail}): nothing was sent"""

    def __init__(self, *, nick: str, detail: str) -> None:
        self.nick = nick
        super().__init__(detail=detail)


class BadPrekeySignature(BadPrekeyBundle):
    """the relay gave a signed prekey (#{prekey_id}) for {nick} that {nick}'s identity key
    did not sign: the relay, or someone between it and you, substituted it; nothing was
    sent"""

    def __init__(self, *, nick: str, prekey_id: int) -> None:
        self.prekey_id = prekey_id
        super().__init__(nick=nick, detail=f"bad signature on signed prekey #{prekey_id}")


# -- things a user runs into --------------------------------------------------------------


class UsageError(E2EChatError):
    """{detail}"""

    exit_code = 2


class _RelayError(E2EChatError):
    """the relay at {host}:{port}: {detail}"""

    def __init__(self, *, host: str, port: int, detail: str = "") -> None:
        self.host = host
        self.port = port
        super().__init__(detail=detail)


class RelayUnreachable(_RelayError):
    """cannot reach relay at {host}:{port} — is `e2echat relay` running?"""

    exit_code = 3


class RelayGone(_RelayError):
    """lost the relay at {host}:{port}: {detail}"""

    exit_code = 4


class UntrustedRelayKey(_RelayError):
    """the relay at {host}:{port} {detail}"""

    exit_code = 6

    def __init__(self, *, host: str, port: int, offered: str, expected: str, given: bool) -> None:
        #: fingerprints: of the key the relay showed, and of the one expected
        self.offered = offered
        self.expected = expected
        nothing_sent = "nothing was sent to it (not your password either)"
        if given:
            detail = f"has key {offered}, not the {expected} given with --trust-relay-key; {nothing_sent}"
        else:
            detail = (
                f"has a different key than the one pinned for it: it may be an impostor, and "
                f"{nothing_sent}. Pinned: {expected}; now: {offered}. If whoever runs the relay "
                f"confirms that its key changed (`e2echat relay` prints it), run again with "
                f"--trust-relay-key '{offered}'"
            )
        super().__init__(host=host, port=port, detail=detail)


class ImpostorAnnouncement(_RelayError):
    """the relay at {host}:{port} has key {offered}, but its announcement on the LAN gave
    {expected}: someone on your network may be posing as a relay, and nothing was sent to
    it (not your password either). Ask whoever runs the relay for its address and key
    fingerprint (`e2echat relay` prints them), and give them with --host, --port and
    --trust-relay-key"""

    exit_code = 6

    def __init__(self, *, host: str, port: int, offered: str, expected: str) -> None:
        self.offered = offered
        self.expected = expected
        super().__init__(host=host, port=port)


class NoRelayFound(E2EChatError):
    """{detail}"""


class RelayStartError(_RelayError):
    """cannot start the relay on {host}:{port}: {detail}"""


class ClusterUnreachable(E2EChatError):
    """cannot reach the cluster's NATS server at {url}: {detail}"""

    def __init__(self, *, url: str, detail: str) -> None:
        self.url = url
        super().__init__(detail=detail)


class ClusterUnavailable(E2EChatError):
    """--cluster needs the NATS client: pip install 'e2echat[cluster]' (nats-py)"""


class RegistrationRefused(E2EChatError):
    """the relay turned {nick} away: {detail}"""

    exit_code = 5

    def __init__(self, *, nick: str, detail: str, code: str = "") -> None:
        self.nick = nick
        #: the relay's error code (``nick_taken``, ``bad_password``, ...): for programs
        self.code = code
        super().__init__(detail=detail)


class _KeyFileProblem(E2EChatError):
    """cannot use key file {path}: {detail}"""

    def __init__(self, *, path: PurePath | str, detail: str = "") -> None:
        self.path = path
        super().__init__(detail=detail)


class KeyFileError(_KeyFileProblem):
    """cannot use {path}: {detail}"""


class CommandError(E2EChatError):
    """{detail}"""


class PassphraseRequired(_KeyFileProblem):
    """your identity key in {path} is protected by a passphrase:
    run with --passphrase or set E2ECHAT_PASSPHRASE"""


class ProfileInUse(_KeyFileProblem):
    """the profile in {path} is in use by another e2echat: close that one first
    (or give this one its own --home)"""

    exit_code = 2


class WrongPassphrase(_KeyFileProblem):
    """wrong passphrase for the identity key in {path}"""


class StoreError(E2EChatError):
    """cannot use the relay store {path}: {detail}"""

    def __init__(self, *, path: PurePath | str, detail: str = "") -> None:
        self.path = path
        super().__init__(detail=detail)


class StoreInUse(StoreError):
    """the relay store {path} is in use by another relay: stop that one first
    (or give this one its own --store)"""

    exit_code = 2


class HistoryIncomplete(_KeyFileProblem):
    """{detail} lines of {path} did not open (damaged, or sealed with another key) and were
    left out"""


class TransferFileError(E2EChatError):
    """cannot use {path}: {detail}"""

    def __init__(self, *, path: PurePath | str, detail: str = "") -> None:
        self.path = path
        super().__init__(detail=detail)
