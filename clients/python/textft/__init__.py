"""textft: fine-tune text models with LoRA and serve them, over gRPC."""

from .client import Client
from .errors import TextftError
from .uploads import UploadProgress

__all__ = ["Client", "TextftError", "UploadProgress"]
__version__ = "0.1.0"
