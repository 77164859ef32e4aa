"""clearvae: variational autoencoders that make images smaller, cleaner and new."""

__version__ = "0.1.0"

from clearvae.codec.storage import load_codec  # noqa: E402
from clearvae.generate import load  # noqa: E402
from clearvae.restore import denoise, denoise_volume, inpaint  # noqa: E402

__all__ = ["__version__", "denoise", "denoise_volume", "inpaint", "load", "load_codec"]
