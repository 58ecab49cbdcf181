"""vivat: the VIVAT KL-VAE built on vivat_kernels' fused layers.

    cfg = vivat.VAEConfig.from_preset("vivat-f8c16")
    model = vivat.AutoencoderKL(cfg)
    x_hat, posterior = model(x)               # x in [-1, 1], (N, 3, H, W), H and W multiples of 8
    model.save_pretrained("out/")             # config.json + model.safetensors
    model = vivat.AutoencoderKL.from_pretrained("out/")

Training losses and the discriminator live in :mod:`vivat.losses` (imported on demand: it pulls
in ``lpips``).
"""

from .config import PRESETS, LossConfig, VAEConfig, preset_names
from .model import AutoencoderKL, DiagonalGaussianDistribution

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AutoencoderKL",
    "DiagonalGaussianDistribution",
    "LossConfig",
    "VAEConfig",
    "__version__",
    "preset_names",
]
