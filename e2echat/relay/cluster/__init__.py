"""Relays in a cluster on NATS: ``e2echat relay --cluster nats://HOST:PORT``.

Relays on the same NATS server under the same cluster name act as one relay to every
client. ``wire`` and ``core`` are pure; ``relay`` is the shell, and the only module that
imports nats-py (the ``cluster`` extra).
"""
