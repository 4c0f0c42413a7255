"""``python -m paoding_widgets.engine.rules``: print the table of supported layer kinds (Markdown)."""

from . import supported_kinds_markdown

print(supported_kinds_markdown(), end="")
