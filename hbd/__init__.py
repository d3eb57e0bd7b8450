"""hbd: the Hummingbird daemon."""

__version__ = "0.1.0"

# The Engine API version hbd implements, and the oldest it still serves.
API_VERSION = "1.47"
MIN_API_VERSION = "1.24"
