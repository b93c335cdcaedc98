"""casd: a content-addressed asset store for CI and test infrastructure."""

__version__ = "0.1.0"
