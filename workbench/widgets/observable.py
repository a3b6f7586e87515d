"""Observers for the controllers: widgets register a callback and are told what changed, from the worker thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Observable"]


class Observable:
    """``observe(callback)``: ``callback(controller, what)`` on every change. A failing observer is handed to
    :meth:`observer_failed` and never stops the worker that reported the change."""

    def __init__(self) -> None:
        self._observers: list[Callable[[Any, str], None]] = []

    def observe(self, callback: Callable[[Any, str], None]) -> None:
        self._observers.append(callback)

    def unobserve(self, callback: Callable[[Any, str], None]) -> None:
        if callback in self._observers:
            self._observers.remove(callback)

    def _notify(self, what: str = "state") -> None:
        for callback in list(self._observers):
            try:
                callback(self, what)
            except Exception as exc:  # a broken observer must not kill the worker
                self.observer_failed(callback, exc)

    def observer_failed(self, callback: Callable[[Any, str], None], exc: Exception) -> None:
        """What to do with an observer's exception (subclasses keep it where their users look)."""
