"""The bptrain version, in a module of its own: checkpoints and summaries record it without
importing the package's lazy API (``bptrain/__init__.py``)."""

__version__ = "0.2.0"
