"""nerepro: reproduce 'Improved generalization by noise enhancement' (Mori & Ueda) end to end."""

__version__ = "0.1.0"

from .config import RunConfig  # noqa: E402
from .gradient import noise_enhanced_loss  # noqa: E402
from .models import build_model  # noqa: E402
from .train import train, train_pack  # noqa: E402

__all__ = ["RunConfig", "build_model", "noise_enhanced_loss", "train", "train_pack", "__version__"]
