"""spiky-torch's version, in a leaf module: code inside ``spiky`` reads it without importing the package's
``__init__`` (which imports spiky.torch)."""

__version__ = "0.1.0"
