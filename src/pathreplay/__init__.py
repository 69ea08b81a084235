"""pathreplay: patch one SAE feature during generation and trace what changes downstream."""

__version__ = "0.1.0"
