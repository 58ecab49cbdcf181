"""vivat: the VIVAT KL-VAE built on vivat_kernels' fused layers."""

__version__ = "0.1.0"
