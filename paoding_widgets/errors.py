"""One error hierarchy for the whole package.

Why: a notebook user should be able to catch everything we refuse with one
``except PaodingError``, and tell the kinds apart when it matters.  Each class
also derives from the built-in it replaced (``ValueError``, ``KeyError``,
``RuntimeError``), so code written against the earlier built-ins keeps working.
Messages name the layer, option or value at fault.
"""

from __future__ import annotations


class PaodingError(Exception):
    """Base of every error paoding_widgets raises on purpose."""


class ConfigError(PaodingError, ValueError):
    """A setting or option is invalid (strategy option, ``input_range``, target, step...)."""


class ModelError(PaodingError, ValueError):
    """A model cannot be read or pruned as given (no inputs, no prunable layer, ...)."""


class UnknownLayerError(PaodingError, KeyError):
    """A layer or unit-group name that the model does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; ours is a sentence
        return str(self.args[0]) if self.args else ""


class EditError(PaodingError, ValueError):
    """An edit was refused (dead unit, index out of range, non-finite fold...)."""


class SurgeryError(PaodingError, RuntimeError):
    """The physically smaller model could not be built (names the layer)."""


class ExportError(PaodingError, RuntimeError):
    """A model could not be exported (with the converter's reason)."""


class SessionError(PaodingError, ValueError):
    """A session action was refused; the message names the layer or value."""


class SessionFileError(SessionError):
    """A session file is damaged, edited, foreign, too large or from an unknown version."""


__all__ = [
    "ConfigError", "EditError", "ExportError", "ModelError", "PaodingError", "SessionError",
    "SessionFileError", "SurgeryError", "UnknownLayerError",
]
