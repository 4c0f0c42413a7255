"""The kernel-side session: layer states, iterations, undo/redo, persistence.

Knows nothing of widgets; views subscribe to its events.
"""

from .core import LayerInfo, PruningSession, RunHandle, RunResult, SessionError
from .events import Event
from .history import HistoryItem
from .persistence import SessionFileError

__all__ = ["Event", "HistoryItem", "LayerInfo", "PruningSession", "RunHandle", "RunResult", "SessionError",
           "SessionFileError"]
