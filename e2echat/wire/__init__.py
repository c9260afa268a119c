"""Bytes on the wire: frames, messages and their encodings. Pure: no I/O."""
