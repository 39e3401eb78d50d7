"""The version of boltzgen (one place; ``boltzgen.__version__`` re-exports it)."""

__version__ = "0.1.0"
