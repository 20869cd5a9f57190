"""suite: five self-hosted AI applications sharing one core."""

__version__ = "0.1.0"
