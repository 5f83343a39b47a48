"""moat: run an agent in an isolated container with its services."""

__version__ = "0.1.0"
