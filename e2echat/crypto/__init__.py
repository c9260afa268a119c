"""Cryptography on PyNaCl (libsodium): primitives, sessions, identity. Pure: no I/O."""
