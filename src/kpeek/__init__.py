"""kpeek: see inside a running Linux kernel, safely."""

__version__ = "0.1.0"
