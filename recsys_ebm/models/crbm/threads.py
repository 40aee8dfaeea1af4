"""Torch intra-op threads for the CRBM's methods: ``threaded`` runs a method under its
config's ``num_threads`` and restores the caller's setting."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (0: unchanged), restoring the caller's setting."""
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def threaded(method):
    """Run a ``CRBM`` method under its config's ``num_threads``."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with torch_threads(self.config.num_threads):
            return method(self, *args, **kwargs)

    return wrapper
