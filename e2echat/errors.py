"""One exception hierarchy for e2echat.

Every error a user can see is a class whose docstring is the text shown, with
``{placeholders}`` filled from the keyword arguments it was raised with. The CLI
is the one place that turns these into a message and an exit code.
"""

from __future__ import annotations

from typing import Any


class E2EChatError(Exception):
    """e2echat failed: {detail}"""

    exit_code = 1

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        super().__init__(self.user_message())

    def user_message(self) -> str:
        template = " ".join((self.__doc__ or "{detail}").split())
        try:
            return template.format(**self.fields)
        except (KeyError, IndexError):
            return template


# -- the peer (relay or client on the other end of a socket) misbehaved ---------------


class RemoteProtocolError(E2EChatError):
    """protocol error: {detail}"""


class FrameTooLarge(RemoteProtocolError):
    """frame of {size} bytes exceeds the limit of {limit} bytes"""


# -- we misused an API: a bug in e2echat or in a caller ---------------------------------


class LocalProtocolError(E2EChatError):
    """internal error: {detail}"""


# -- crypto: a message that does not authenticate ---------------------------------------


class DecryptionError(E2EChatError):
    """a message from {peer} failed authentication: {detail}"""


class ReplayError(DecryptionError):
    """a message from {peer} was a replay of message #{counter} and was ignored"""


# -- things a user runs into --------------------------------------------------------------


class UsageError(E2EChatError):
    """{detail}"""

    exit_code = 2


class RelayUnreachable(E2EChatError):
    """cannot reach relay at {host}:{port} — is `e2echat relay` running?"""

    exit_code = 3


class RelayGone(E2EChatError):
    """lost the relay at {host}:{port}: {detail}"""

    exit_code = 4


class RegistrationRefused(E2EChatError):
    """the relay turned {nick} away: {detail}"""

    exit_code = 5


class KeyFileError(E2EChatError):
    """cannot use key file {path}: {detail}"""


class RelayStartError(E2EChatError):
    """cannot start the relay on {host}:{port}: {detail}"""


class CommandError(E2EChatError):
    """{detail}"""


class PassphraseRequired(E2EChatError):
    """your identity key in {path} is protected by a passphrase:
    run with --passphrase or set E2ECHAT_PASSPHRASE"""


class WrongPassphrase(E2EChatError):
    """wrong passphrase for the identity key in {path}"""
