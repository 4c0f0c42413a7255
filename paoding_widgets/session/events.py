"""Observer plumbing: the session emits events, views subscribe. No polling.

Why: the widget, a progress bar and a log all want to know when the session
changes, and none of them should be known to the session.  A broken
subscriber is logged and skipped, so a view can never break the kernel side.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("paoding_widgets")

EVENT_KINDS = ("state", "proposal", "progress", "error")


@dataclass(frozen=True)
class Event:
    """``kind`` is one of :data:`EVENT_KINDS`; ``data`` depends on it."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[Event], None]


class Emitter:
    """Thread-safe list of listeners, each optionally filtered by kinds."""

    def __init__(self) -> None:
        self._listeners: list[tuple[Listener, frozenset[str] | None]] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener, kinds: tuple[str, ...] | None = None) -> Callable[[], None]:
        """Call ``listener(event)`` on each event (of ``kinds``); returns an unsubscribe function."""
        unknown = set(kinds or ()) - set(EVENT_KINDS)
        if unknown:
            raise ValueError(f"unknown event kinds {sorted(unknown)}; known: {', '.join(EVENT_KINDS)}")
        entry = (listener, frozenset(kinds) if kinds else None)
        with self._lock:
            self._listeners.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._listeners:
                    self._listeners.remove(entry)

        return unsubscribe

    def emit(self, kind: str, **data: Any) -> None:
        event = Event(kind, data)
        with self._lock:
            listeners = list(self._listeners)
        for listener, kinds in listeners:
            if kinds is not None and kind not in kinds:
                continue
            try:
                listener(event)
            except Exception:  # a view must not break the session
                log.exception("paoding_widgets: a %r event listener failed", kind)
