"""The Jupyter widget: a thin anywidget view over a PruningSession."""

from .pruning_widget import PruningWidget

__all__ = ["PruningWidget"]
