"""The KL-VAE of LDM / Stable Diffusion / FLUX, with the two architectural VIVAT fixes as switches.

    x (N, 3, H, W) in [-1, 1]
      Encoder: conv_in -> down[i] (ResnetBlock x n, Downsample) -> mid (block, attn, block)
               -> GN+SiLU -> conv_out -> quant_conv            => (mean, logvar), 2*z channels
      posterior q(z|x) = N(mean, exp(logvar))                   => z (N, z, H/8, W/8)
      Decoder: post_quant_conv -> conv_in -> mid -> up[i] (ResnetBlock x (n+1), Upsample)
               -> norm+SiLU -> conv_out                         => x_hat (N, 3, H, W)

Switches (see :class:`vivat.config.VAEConfig`):

* ``padding_mode="reflect"``: every 3x3 conv is a :class:`ReflectConv2d`, and so is the stride-2
  downsample, whose LDM pad (right and bottom by one pixel) reflects instead of adding zeros.
* ``scn=True``: every decoder norm (ResNet blocks, mid attention, ``norm_out``) is a
  :class:`SpatialNorm` conditioned on the latent ``z`` handed to :meth:`AutoencoderKL.decode`,
  i.e. *before* ``post_quant_conv``, as MoVQ conditions on the quantised latent rather than the
  decoder input. Its ``conv_y`` / ``conv_b`` start as the identity (weight 0, bias 1 / 0), so at
  initialisation an SCN decoder computes exactly what a plain-GN decoder does.

Parameter names are LDM's (``encoder.down.0.block.0.norm1.weight``, ``decoder.up.3.upsample.conv``,
``decoder.mid.attn_1.q``, ``quant_conv``...), so SD / FLUX weights map by a key remap, and SCN
norms use the MoVQ / diffusers names (``norm1.norm_layer.weight``, ``norm1.conv_y.weight``...).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vivat_kernels.nn import FusedGroupNorm, ReflectConv2d, SpatialNorm

from .config import VAEConfig
from .errors import InputError, WeightsError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ModelFileNotFoundError(InputError, FileNotFoundError):
    """A model folder without its ``config.json`` or ``model.safetensors``."""


def write_safetensors(
    tensors: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors`` to ``path`` atomically (a temporary name, then a rename), with the
    permissions of any new file (``0o666`` less the umask: 0644 usually), not safetensors' 0600."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file; a damaged or foreign file raises :class:`WeightsError` naming it.

    safetensors checks the header (its length, the JSON, that the offsets cover the data exactly),
    which catches truncated, empty and garbage files; it has no checksum of the tensor bytes.
    """
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(
            f"{path} is not a readable .safetensors file ({reason}): it is damaged, truncated or another format"
        ) from err


# -------------------------------------------------------------------------------------------
# Layers
# -------------------------------------------------------------------------------------------
def conv3x3(in_ch: int, out_ch: int, padding_mode: str) -> nn.Conv2d:
    """3x3 conv, stride 1, 'same' size; reflect or zero padding."""
    if padding_mode == "reflect":
        return ReflectConv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1)
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1)


def make_norm(channels: int, groups: int, act: str | None, zq_channels: int | None, zq_kernel: int = 1) -> nn.Module:
    """GroupNorm (eps 1e-6) with optional fused SiLU; spatially conditional when ``zq_channels``
    (its scale/shift convs ``zq_kernel`` x ``zq_kernel``)."""
    if zq_channels is None:
        return FusedGroupNorm(groups, channels, eps=1e-6, act=act)
    norm = SpatialNorm(channels, zq_channels, num_groups=groups, eps=1e-6, act=act, zq_kernel=zq_kernel)
    # Identity start: gamma = conv_y(z) = 1, beta = conv_b(z) = 0 for any z.
    nn.init.zeros_(norm.conv_y.weight)
    nn.init.ones_(norm.conv_y.bias)
    nn.init.zeros_(norm.conv_b.weight)
    nn.init.zeros_(norm.conv_b.bias)
    return norm


def apply_norm(norm: nn.Module, x: Tensor, zq: Tensor | None) -> Tensor:
    """Call a norm made by :func:`make_norm`; only spatially conditional ones read ``zq``."""
    return norm(x, zq) if isinstance(norm, SpatialNorm) else norm(x)


class ResnetBlock(nn.Module):
    """LDM ResNet block: (norm -> SiLU -> conv3x3) x 2 plus a 1x1 ``nin_shortcut`` if widths differ."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        groups: int,
        padding_mode: str,
        zq_channels: int | None = None,
        zq_kernel: int = 1,
    ):
        super().__init__()
        self.norm1 = make_norm(in_ch, groups, "silu", zq_channels, zq_kernel)
        self.conv1 = conv3x3(in_ch, out_ch, padding_mode)
        self.norm2 = make_norm(out_ch, groups, "silu", zq_channels, zq_kernel)
        self.conv2 = conv3x3(out_ch, out_ch, padding_mode)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, kernel_size=1) if in_ch != out_ch else None

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        h = self.conv1(apply_norm(self.norm1, x, zq))
        h = self.conv2(apply_norm(self.norm2, h, zq))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """LDM single-head self-attention over all positions; q, k, v, proj_out are 1x1 convs."""

    def __init__(self, channels: int, groups: int, zq_channels: int | None = None, zq_kernel: int = 1):
        super().__init__()
        self.norm = make_norm(channels, groups, None, zq_channels, zq_kernel)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        n, c, h, w = x.shape
        hn = apply_norm(self.norm, x, zq)

        def tokens(t: Tensor) -> Tensor:  # (N, C, H, W) -> (N, 1, HW, C)
            return t.reshape(n, 1, c, h * w).transpose(-1, -2)

        out = F.scaled_dot_product_attention(tokens(self.q(hn)), tokens(self.k(hn)), tokens(self.v(hn)))
        out = out.transpose(-1, -2).reshape(n, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after LDM's asymmetric pad: one pixel right and bottom (zeros or reflect)."""

    def __init__(self, channels: int, padding_mode: str):
        super().__init__()
        if padding_mode == "reflect":
            self.conv = ReflectConv2d(channels, channels, kernel_size=3, stride=2, padding=0, pad4=(0, 1, 0, 1))
        else:
            self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)
        self.padding_mode = padding_mode

    def forward(self, x: Tensor) -> Tensor:
        if self.padding_mode == "zeros":
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv."""

    def __init__(self, channels: int, padding_mode: str):
        super().__init__()
        self.conv = conv3x3(channels, channels, padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    """block_1 -> attn_1 (optional) -> block_2, at the lowest resolution."""

    def __init__(self, channels: int, cfg: VAEConfig, zq_channels: int | None):
        super().__init__()
        k = cfg.scn_kernel
        self.block_1 = ResnetBlock(channels, channels, cfg.norm_groups, cfg.padding_mode, zq_channels, k)
        self.attn_1 = AttnBlock(channels, cfg.norm_groups, zq_channels, k) if cfg.mid_attn else None
        self.block_2 = ResnetBlock(channels, channels, cfg.norm_groups, cfg.padding_mode, zq_channels, k)

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        x = self.block_1(x, zq)
        if self.attn_1 is not None:
            x = self.attn_1(x, zq)
        return self.block_2(x, zq)


class DownLevel(nn.Module):
    """One encoder resolution: ResNet blocks, then (except at the lowest level) a Downsample."""

    def __init__(self, blocks: list[ResnetBlock], downsample: Downsample | None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, h: Tensor) -> Tensor:
        for block in self.block:
            h = block(h)
        return h if self.downsample is None else self.downsample(h)


class UpLevel(nn.Module):
    """One decoder resolution: ResNet blocks, then (except at full resolution) an Upsample."""

    def __init__(self, blocks: list[ResnetBlock], upsample: Upsample | None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.upsample = upsample

    def forward(self, h: Tensor, zq: Tensor | None = None) -> Tensor:
        for block in self.block:
            h = block(h, zq)
        return h if self.upsample is None else self.upsample(h)


# -------------------------------------------------------------------------------------------
# Encoder, decoder, posterior
# -------------------------------------------------------------------------------------------
class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        pm, groups = cfg.padding_mode, cfg.norm_groups
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = conv3x3(cfg.in_channels, cfg.ch, pm)
        self.down = nn.ModuleList()
        block_in = cfg.ch
        for i, block_out in enumerate(widths):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, groups, pm))
                block_in = block_out
            last = i == len(widths) - 1
            self.down.append(DownLevel(blocks, None if last else Downsample(block_in, pm)))
        self.mid = MidBlock(block_in, cfg, zq_channels=None)
        self.norm_out = make_norm(block_in, groups, "silu", None)
        self.conv_out = conv3x3(block_in, 2 * cfg.z_channels, pm)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(self.norm_out(h))


class Decoder(nn.Module):
    """Mirror of the encoder. ``up[i]`` outputs ``ch * ch_mult[i]`` channels and, as in LDM, the
    levels run from ``up[-1]`` (lowest resolution) to ``up[0]``; each has ``num_res_blocks + 1``
    blocks. With ``scn`` every norm reads the latent ``zq``."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        pm, groups = cfg.padding_mode, cfg.norm_groups
        zq_ch = cfg.z_channels if cfg.scn else None
        widths = [cfg.ch * m for m in cfg.ch_mult]
        block_in = widths[-1]
        self.conv_in = conv3x3(cfg.z_channels, block_in, pm)
        self.mid = MidBlock(block_in, cfg, zq_ch)
        levels: list[UpLevel] = []
        for i in reversed(range(len(widths))):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, widths[i], groups, pm, zq_ch, cfg.scn_kernel))
                block_in = widths[i]
            levels.insert(0, UpLevel(blocks, Upsample(block_in, pm) if i != 0 else None))
        self.up = nn.ModuleList(levels)
        self.norm_out = make_norm(block_in, groups, "silu", zq_ch, cfg.scn_kernel)
        self.conv_out = conv3x3(block_in, cfg.out_channels, pm)

    def forward(self, h: Tensor, zq: Tensor | None = None) -> Tensor:
        """``h``: the decoder input (after ``post_quant_conv``); ``zq``: the latent the SCN norms read."""
        h = self.mid(self.conv_in(h), zq)
        for level in reversed(self.up):
            h = level(h, zq)
        return self.conv_out(apply_norm(self.norm_out, h, zq))


class DiagonalGaussianDistribution:
    """q(z|x) = N(mean, diag(exp(logvar))), from the encoder's 2*z channels (mean first).

    ``logvar`` is clamped to [-30, 20] as in LDM. :meth:`kl` is KL(q || N(0, I)) **summed over
    the latent elements of each sample**, shape (N,), as LDM's; the loss decides its scale.
    """

    def __init__(self, moments: Tensor):
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        # Summed in float32 even under bf16 autocast: the sum runs over every latent element.
        mean, var, logvar = self.mean.float(), self.var.float(), self.logvar.float()
        return 0.5 * torch.sum(mean.pow(2) + var - 1.0 - logvar, dim=(1, 2, 3))


# -------------------------------------------------------------------------------------------
# The autoencoder
# -------------------------------------------------------------------------------------------
class AutoencoderKL(nn.Module):
    """KL-VAE: ``encode(x) -> posterior``, ``decode(z) -> x_hat``, ``forward(x) -> (x_hat, posterior)``.

    Images are (N, in_channels, H, W) in [-1, 1] with H and W multiples of
    ``config.downsample_factor`` (8 for the f8 presets).
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        z = config.z_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(z, z, kernel_size=1)

    def encode(self, x: Tensor) -> DiagonalGaussianDistribution:
        f = self.config.downsample_factor
        if x.dim() != 4 or x.shape[1] != self.config.in_channels or x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(
                f"expected images (N, {self.config.in_channels}, H, W) with H, W multiples of {f}, got {tuple(x.shape)}"
            )
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z: Tensor) -> Tensor:
        if z.dim() != 4 or z.shape[1] != self.config.z_channels:
            raise ValueError(f"expected latents (N, {self.config.z_channels}, h, w), got {tuple(z.shape)}")
        return self.decoder(self.post_quant_conv(z), z if self.config.scn else None)

    def forward(
        self, x: Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Tensor, DiagonalGaussianDistribution]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior

    def last_layer(self) -> Tensor:
        """The decoder's last conv weight, where the adaptive GAN weight compares gradients."""
        return self.decoder.conv_out.weight

    def compile_for_training(self, **compile_kwargs: Any) -> AutoencoderKL:
        """``torch.compile`` every block in place except the decoder's last conv; returns self.

        Compiling the whole model makes its backward one opaque graph, so each of the adaptive
        GAN weight's two ``autograd.grad(..., last_layer)`` calls would run the full backward
        instead of just the last conv's. With ``conv_out`` left eager, those calls stop there.
        ``nn.Module.compile`` works in place: parameter names and the state_dict do not change.
        """
        blocks = [self.encoder, self.quant_conv, self.post_quant_conv, self.decoder.conv_in, self.decoder.mid]
        blocks += [*self.decoder.up, self.decoder.norm_out]
        for block in blocks:
            block.compile(**compile_kwargs)
        return self

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters that define the latent space (encoder and quant_conv)."""
        return list(self.encoder.parameters()) + list(self.quant_conv.parameters())

    def set_encoder_trainable(self, trainable: bool) -> None:
        """Freeze (False) or unfreeze the encoder side, for the decoder-only stage."""
        for p in self.encoder_parameters():
            p.requires_grad_(trainable)

    # ---------------------------------------------------------------------------------------
    # Persistence: config.json + model.safetensors, no pickle
    # ---------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed).

        Each file is written to a temporary name and renamed into place, so a crash never leaves
        a half-written file under the final name. Both files get the usual permissions of a new
        file (0644 under umask 022; safetensors alone would create the weights as 0600). Returns
        the directory.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        write_safetensors(tensors, out / WEIGHTS_NAME, metadata={"format": "pt"})
        tmp_config = out / (CONFIG_NAME + ".tmp")
        tmp_config.write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp_config, out / CONFIG_NAME)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> AutoencoderKL:
        """Build from ``config.json`` and load ``model.safetensors`` with every key and shape checked.

        A missing file raises :class:`ModelFileNotFoundError`, a bad ``config.json``
        :class:`vivat.errors.ConfigError` (naming the file and the field), damaged or mismatched
        weights :class:`vivat.errors.WeightsError` (naming the file).
        """
        src = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (src / name).is_file():
                raise ModelFileNotFoundError(
                    f"{src / name} not found (a model folder holds {CONFIG_NAME} and {WEIGHTS_NAME}, "
                    "as written by save_pretrained)"
                )
        config = VAEConfig.from_json_file(src / CONFIG_NAME)
        with torch.device("meta"):  # shapes only: no random init of weights about to be replaced
            model = cls(config)
        state = read_safetensors(src / WEIGHTS_NAME, device=device)
        check_state_dict(model.state_dict(), state, source=str(src / WEIGHTS_NAME))
        # Copy into fresh allocations rather than adopting the loaded tensors: those are views at
        # arbitrary offsets of one file buffer, and misaligned parameters can take slower (and
        # differently rounded) vector paths in the fused kernels.
        model.to_empty(device=device)
        model.load_state_dict(state, strict=True)
        return model


def check_state_dict(expected: dict[str, Tensor], found: dict[str, Tensor], source: str = "state dict") -> None:
    """Raise one :class:`WeightsError` (a ValueError) naming every missing, unexpected and misshaped key."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = [
        f"{k}: file {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", misshaped)):
        if items:
            shown = ", ".join(items[:10]) + (f", ... ({len(items) - 10} more)" if len(items) > 10 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise WeightsError(f"{source} does not match the model config: " + "; ".join(problems))
