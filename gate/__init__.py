"""fairgate: a queue-based, fair admission gate for flash promotions."""

__version__ = "0.1.0"
