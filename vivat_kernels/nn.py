"""Drop-in modules built on the fused ops.

Each keeps the parameter names and state_dict keys of the module it replaces, so weights load
unchanged in both directions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .ops.group_norm import ACTS, fused_group_norm


class FusedGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (optionally followed by SiLU) computed by one fused kernel.

    Same constructor, parameters (``weight``, ``bias``) and state_dict keys as ``nn.GroupNorm``.
    ``act="silu"`` folds the activation that usually follows the norm into the same pass.
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        act: str | None = None,
        device=None,
        dtype=None,
    ) -> None:
        if act not in ACTS:
            raise ValueError(f"act must be one of {ACTS}, got {act!r}")
        super().__init__(num_groups, num_channels, eps=eps, affine=affine, device=device, dtype=dtype)
        self.act = act

    @classmethod
    def from_group_norm(cls, gn: nn.GroupNorm, act: str | None = None) -> FusedGroupNorm:
        """A FusedGroupNorm sharing ``gn``'s parameters (no copy)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.num_groups, new.num_channels, new.eps, new.affine = gn.num_groups, gn.num_channels, gn.eps, gn.affine
        new.weight, new.bias = gn.weight, gn.bias
        new.act = act
        return new

    def forward(self, x: Tensor) -> Tensor:
        return fused_group_norm(x, self.num_groups, self.weight, self.bias, eps=self.eps, act=self.act)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", act={self.act!r}" if self.act else "")


class SpatialNorm(nn.Module):
    """Spatially conditional normalisation (MoVQ; diffusers ``SpatialNorm``), fused.

        out = act( GroupNorm(f) * conv_y(up(zq)) + conv_b(up(zq)) )

    The 1x1 convs commute with nearest upsampling, so they run on ``zq`` at its own (latent)
    resolution and the fused kernel reads the result by index: the full-resolution scale and
    shift never exist in memory. Parameter names match diffusers / MoVQ / KVAE
    (``norm_layer.*``, ``conv_y.*``, ``conv_b.*``).

    ``zq_kernel=3`` makes ``conv_y``/``conv_b`` reflect-padded 3x3 convs (still at latent
    resolution): each latent cell's scale and shift then blend its neighbours, as the decoder's
    own 3x3 convs do. Not a diffusers/MoVQ layout (theirs are 1x1).
    """

    def __init__(
        self,
        f_channels: int,
        zq_channels: int,
        num_groups: int = 32,
        eps: float = 1e-6,
        act: str | None = None,
        zq_kernel: int = 1,
    ) -> None:
        super().__init__()
        if act not in ACTS:
            raise ValueError(f"act must be one of {ACTS}, got {act!r}")
        if zq_kernel not in (1, 3) or isinstance(zq_kernel, bool):
            raise ValueError(f"zq_kernel must be 1 or 3, got {zq_kernel!r}")
        self.norm_layer = nn.GroupNorm(num_channels=f_channels, num_groups=num_groups, eps=eps, affine=True)
        if zq_kernel == 1:
            self.conv_y = nn.Conv2d(zq_channels, f_channels, kernel_size=1, stride=1, padding=0)
            self.conv_b = nn.Conv2d(zq_channels, f_channels, kernel_size=1, stride=1, padding=0)
        else:
            self.conv_y = ReflectConv2d(zq_channels, f_channels, kernel_size=3, stride=1, padding=1)
            self.conv_b = ReflectConv2d(zq_channels, f_channels, kernel_size=3, stride=1, padding=1)
        self.act = act
        self.zq_kernel = zq_kernel

    def forward(self, f: Tensor, zq: Tensor) -> Tensor:
        if not isinstance(zq, Tensor) or zq.dim() != 4 or zq.shape[0] != f.shape[0]:
            raise ValueError(
                f"zq must be (N, C_zq, h, w) with the batch size of f {tuple(f.shape)}, got "
                f"{tuple(zq.shape) if isinstance(zq, Tensor) else type(zq).__name__}"
            )
        if zq.shape[-2] > f.shape[-2] or zq.shape[-1] > f.shape[-1]:
            # Larger conditioning than the feature map: downsample it like diffusers would.
            zq = torch.nn.functional.interpolate(zq, size=f.shape[-2:], mode="nearest")
        norm = self.norm_layer
        return fused_group_norm(
            f,
            norm.num_groups,
            norm.weight,
            norm.bias,
            gamma=self.conv_y(zq),
            beta=self.conv_b(zq),
            eps=norm.eps,
            act=self.act,
        )

    def extra_repr(self) -> str:
        parts = [f"act={self.act!r}"] if self.act else []
        if self.zq_kernel != 1:
            parts.append(f"zq_kernel={self.zq_kernel}")
        return ", ".join(parts)


class ReflectConv2d(nn.Conv2d):
    """``nn.Conv2d`` with reflect padding, without materialising the padded tensor.

    Same constructor, parameters and state_dict keys as ``nn.Conv2d``, so ``nn.Conv2d`` weights
    load unchanged; ``padding_mode`` is always ``"reflect"``. ``pad4`` (left, right, top, bottom)
    overrides the symmetric padding, e.g. ``(0, 1, 0, 1)`` for the LDM stride-2 downsample.
    Runs :func:`vivat_kernels.reflect_conv2d` (groups 1, dilation 1, odd kernels, equal strides);
    other configurations fall back to the eager ``F.pad`` + ``F.conv2d``.
    """

    def __init__(self, *args, pad4: tuple[int, int, int, int] | None = None, **kwargs) -> None:
        kwargs["padding_mode"] = "reflect"
        super().__init__(*args, **kwargs)
        self.pad4 = None if pad4 is None else tuple(int(p) for p in pad4)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, pad4: tuple[int, int, int, int] | None = None) -> ReflectConv2d:
        """A ReflectConv2d sharing ``conv``'s parameters (no copy), to put in place of it.

        ``conv`` may have any padding mode (zeros, reflect, replicate, circular); the result pads
        by reflection with the same amounts (or ``pad4``).
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_conv expects an nn.Conv2d, got {type(conv).__name__}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for name in (
            "in_channels",
            "out_channels",
            "kernel_size",
            "stride",
            "padding",
            "dilation",
            "transposed",
            "output_padding",
            "groups",
            "_reversed_padding_repeated_twice",
        ):
            setattr(new, name, getattr(conv, name))
        new.padding_mode = "reflect"
        new.register_parameter("weight", conv.weight)
        new.register_parameter("bias", conv.bias)
        new.pad4 = None if pad4 is None else tuple(int(p) for p in pad4)
        new.train(conv.training)
        return new

    def _pad4(self) -> tuple[int, int, int, int]:
        if self.pad4 is not None:
            return self.pad4
        # F.pad order (left, right, top, bottom); also right for padding="same" / "valid".
        return tuple(int(p) for p in self._reversed_padding_repeated_twice)  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        from .ops.reflect_conv import reflect_conv2d

        pad4 = self._pad4()
        kh, kw = self.kernel_size
        if (
            self.groups == 1
            and tuple(self.dilation) == (1, 1)
            and self.stride[0] == self.stride[1]
            and kh % 2 == 1
            and kw % 2 == 1
        ):
            return reflect_conv2d(x, self.weight, self.bias, self.stride[0], pad4)
        x = torch.nn.functional.pad(x, pad4, mode="reflect") if any(pad4) else x
        return torch.nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", pad4={self.pad4}" if self.pad4 is not None else "")
