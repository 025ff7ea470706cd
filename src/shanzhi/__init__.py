"""Shanzhi (善治): many clouds made one, for a city's government.

Layers, top to bottom (enforced by import-linter, see pyproject.toml):
cli -> client | api -> services -> controllers -> scheduler -> store | providers -> domain.
"""

__version__ = "0.1.0"
