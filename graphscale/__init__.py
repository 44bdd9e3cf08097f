"""graphscale: train graph neural networks past the memory and size limits of one device."""
__version__ = "0.1.0"
