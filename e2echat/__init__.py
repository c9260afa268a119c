"""e2echat: a terminal messenger whose relay server is not trusted."""

__version__ = "0.1.0"
