"""hbd: the Hummingbird daemon."""

__version__ = "0.1.0"
