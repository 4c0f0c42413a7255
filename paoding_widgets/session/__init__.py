"""The kernel-side session: layer states, iterations, runs, undo/redo, persistence.

Knows nothing of widgets; views subscribe to its events.
"""

from ..errors import SessionError, SessionFileError
from .core import LayerInfo, PruningSession
from .events import Event
from .history import HistoryItem
from .running import RunHandle, RunResult
from .snapshot import SessionSnapshot

__all__ = ["Event", "HistoryItem", "LayerInfo", "PruningSession", "RunHandle", "RunResult", "SessionError",
           "SessionFileError", "SessionSnapshot"]
