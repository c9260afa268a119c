"""The error classes: typed attributes, and the user's text made from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2echat import errors
from e2echat.errors import (
    E2EChatError,
    FrameTooLarge,
    KeyFileError,
    RegistrationRefused,
    RelayGone,
    ReplayError,
)


def test_attributes_are_typed_fields_and_fill_the_text() -> None:
    refused = RegistrationRefused(nick="alice", detail="that nick is taken", code="nick_taken")
    assert (refused.nick, refused.code, refused.detail) == ("alice", "nick_taken", "that nick is taken")
    assert str(refused) == "the relay turned alice away: that nick is taken"
    gone = RelayGone(host="10.0.0.1", port=7777, detail="it shut down")
    assert str(gone) == "lost the relay at 10.0.0.1:7777: it shut down"
    assert gone.exit_code == 4
    replay = ReplayError(peer="bob", counter=7)
    assert replay.counter == 7 and "#7" in str(replay)
    too_large = FrameTooLarge(size=10, limit=5)
    assert (too_large.size, too_large.limit) == (10, 5)


def test_text_from_a_peer_is_not_a_template() -> None:
    """Braces in a detail (which may quote what a peer sent) are shown as they are."""
    error = KeyFileError(path=Path("/x"), detail="{nick} {0} {")
    assert str(error) == "cannot use /x: {nick} {0} {"


@pytest.mark.parametrize(
    "cls",
    [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, E2EChatError)],
)
def test_every_error_has_user_text(cls: type[E2EChatError]) -> None:
    assert cls.__doc__ and cls.__doc__.strip()
