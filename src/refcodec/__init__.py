"""refcodec: learned image compression with the global-reference entropy model (Qian et al., ICLR 2021).

Public API::

    data = refcodec.compress("photo.png", quality=3)   # bytes; quality=2.5 with a variable-rate model
    data = refcodec.compress("photo.png", target_bpp=0.3)  # or target_psnr=32: rate control
    image = refcodec.decompress(data)                  # PIL.Image
    model = refcodec.load_model("grm", quality=3)
    refcodec.register_pillow()                         # Image.open/save of .rfc files (or import refcodec.pillow)

Attributes are imported on first use, so ``refcodec.bitstream`` loads without torch.
"""

from .errors import RefcodecError

__all__ = ["RefcodecError", "compress", "decompress", "load_model", "register_pillow"]
__version__ = "0.15.0"


def __getattr__(name: str):
    if name == "compress":
        from .api import compress

        return compress
    if name == "decompress":
        from .codec import decompress

        return decompress
    if name == "load_model":
        from .models.registry import load_model

        return load_model
    if name == "register_pillow":
        from .pillow import register

        return register
    raise AttributeError(f"module 'refcodec' has no attribute {name!r}")
