"""What the relay reads from a registered sender: each frame is charged to the sender's
rate first, and decoded only if the sender can pay for it. Pure (no I/O).

Decoding is the relay's one cost that a sender chooses: a MiB ``send`` of small items in
another layout than clients write takes the strict decoder ~35 ms. So a frame over the
rate is never decoded, and one the fast path cannot read is charged ``strict_weight``
times its size before the strict decoder sees it.
"""

from __future__ import annotations

from e2echat.relay.limits import Flow, Limits, Verdict
from e2echat.wire.codec import decode_message, encode_message
from e2echat.wire.fastpath import Routes, fast_routes, send_recipients
from e2echat.wire.framing import encode_frame
from e2echat.wire.grammar import FETCH_CHARGE
from e2echat.wire.messages import Error, Fetch, Message, Routed, Send


def read_frame(flow: Flow, limits: Limits, frame: bytes, now: float) -> Message | Routes | Verdict:
    """The message in ``frame`` (a ``send`` as ``Routes``) if ``flow`` pays for it; the
    verdict if it cannot, and then ``frame`` has not been decoded. Raises
    ``RemoteProtocolError`` for a frame it paid for that is not a valid message."""
    verdict = flow.admit(limits, now, len(frame))
    if verdict is not Verdict.PASS:
        return verdict
    routes = fast_routes(frame)
    if routes is not None:
        return routes
    # The rest of its weight, but no more than fills the bucket: a frame too costly for
    # the burst needs a full bucket, as a frame larger than the burst does.
    extra = min(int(len(frame) * (limits.strict_weight - 1)), max(0, limits.byte_burst - len(frame)))
    verdict = flow.admit(limits, now, extra, frames=0)
    if verdict is not Verdict.PASS:
        return verdict  # the frame's plain charge above stays paid: it was read that far
    message = decode_message(frame)
    if isinstance(message, Fetch):
        # Each bundle handed out costs the relay far more than the bytes that asked for it.
        charge = min(len(message.nicks) * FETCH_CHARGE, limits.byte_burst)
        verdict = flow.admit(limits, now, charge, frames=0)
        if verdict is not Verdict.PASS:
            return verdict
    return Routes.of(message) if isinstance(message, Send) else message


def refusal(frame: bytes, verdict: Verdict, limits: Limits) -> list[bytes]:
    """What to tell a sender whose ``frame`` was refused (REFUSE or WARN): which
    recipients it did not reach, if it reads as a send, and (WARN) that it is over."""
    answers = []
    refused = _refused_send(frame)
    if refused is not None:
        answers.append(encode_frame(encode_message(refused)))
    if verdict is Verdict.WARN:
        text = (
            f"too many messages (at most {limits.rate:g} a second and {limits.byte_rate / 1024:g} KiB "
            "a second); some were not forwarded"
        )
        answers.append(encode_frame(encode_message(Error("rate_limited", text))))
    return answers


def _refused_send(frame: bytes) -> Routed | None:
    """A ``routed`` answer refusing every recipient of ``frame``, if it reads as a send.
    Read from its length fields alone, its bodies skipped: a frame that did not pay is
    not decoded. A frame it misreads (not a send) gets no ``routed`` answer."""
    read = send_recipients(frame)
    if read is None:
        return None
    return Routed(read[0], (), refused=read[1])
