"""A setting that a ``with`` block changes for the code inside it (launch and chunk configs)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class ScopedSetting(Generic[T]):
    """Holds the current value of a setting of type ``kind``; :meth:`use` swaps it for a block."""

    def __init__(self, default: T) -> None:
        self.kind = type(default)
        self.value = default

    @contextlib.contextmanager
    def use(self, value: T) -> Iterator[T]:
        if not isinstance(value, self.kind):
            raise TypeError(
                f"`config` should be a {self.kind.__name__}. Found `{type(value).__name__}`."
            )
        previous, self.value = self.value, value
        try:
            yield value
        finally:
            self.value = previous
