"""Swap the fused layers into an existing model, where that is exactly safe.

:func:`patch` walks any ``nn.Module`` and replaces, in place:

* ``nn.GroupNorm`` -> :class:`~vivat_kernels.nn.FusedGroupNorm`;
* a GroupNorm whose output goes straight into SiLU -> ``FusedGroupNorm(act="silu")``, and the SiLU
  module (now redundant) -> ``nn.Identity``, in the blocks whose forward is known to do exactly
  that: diffusers ``ResnetBlock2D`` (no time embedding), ``ResnetBlockCondNorm2D`` (spatial),
  ``Encoder`` / ``Decoder`` (``conv_norm_out`` + ``conv_act``), LDM / FLUX ``ResnetBlock``, and
  ``nn.Sequential(..., GroupNorm, SiLU, ...)``;
* diffusers / MoVQ ``SpatialNorm`` -> :class:`~vivat_kernels.nn.SpatialNorm` (fused, its 1x1
  convs at latent resolution), with SiLU folded in where the block applies it next;
* ``nn.Conv2d(padding_mode="reflect")`` -> :class:`~vivat_kernels.nn.ReflectConv2d`.

With ``reflect_padding=True`` it also converts zero-padded 3x3 convs and the LDM-style
downsample (zero pad right/bottom by one, then a stride-2 conv) to reflect padding. That one
changes outputs on purpose: it is the VIVAT padding fix applied to a pretrained model.

Blocks are recognised by class name and structure (never by importing diffusers): the class name
must be a known one, the children must be exactly the expected ones, of the exact expected types,
unshared and without hooks. LDM / FLUX ``ResnetBlock`` and the downsample modules, whose forward
is replaced as a whole, are also checked numerically on a small random input before the swap.
Anything that does not match is left as it was, with the reason in the :class:`PatchReport`.

Parameters are shared, not copied, and module names do not change, so ``state_dict()`` keeps
the same keys, in the same order, pointing at the same tensors.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nn import FusedGroupNorm, ReflectConv2d, SpatialNorm

# The LDM downsample pads right and bottom by one pixel before its stride-2, padding-0 conv.
LDM_DOWNSAMPLE_PAD = (0, 1, 0, 1)


# -------------------------------------------------------------------------------------------
# The report
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatchEntry:
    """One decision: module ``name`` (dotted, as in ``named_modules``) of class ``before``
    became ``after`` (None: left as it was), because ``reason``."""

    name: str
    before: str
    after: str | None
    reason: str


@dataclass
class PatchReport:
    """What :func:`patch` replaced and what it left, each with its reason.

    ``changes_outputs`` is True when reflect padding was switched on somewhere (the only kind of
    replacement that is not numerically equivalent). ``str(report)`` is a grouped summary.
    """

    replaced: list[PatchEntry] = field(default_factory=list)
    left: list[PatchEntry] = field(default_factory=list)
    changes_outputs: bool = False
    channels_last: bool = False

    def counts(self) -> dict[str, int]:
        """Number of replacements per ``"before -> after"`` kind."""
        return dict(collections.Counter(f"{e.before} -> {e.after}" for e in self.replaced))

    def left_counts(self) -> dict[str, int]:
        """Number of modules left, per ``"class: reason"``."""
        return dict(collections.Counter(f"{e.before}: {e.reason}" for e in self.left))

    def __str__(self) -> str:
        lines = [f"replaced {len(self.replaced)} module(s):"]
        by_kind: dict[tuple[str, str | None, str], list[str]] = {}
        for e in self.replaced:
            by_kind.setdefault((e.before, e.after, e.reason), []).append(e.name)
        for (before, after, reason), names in by_kind.items():
            lines.append(f"  {len(names):4d} x {before} -> {after}  ({reason})  e.g. {names[0] or '<root>'}")
        lines.append(f"left {len(self.left)} module(s):")
        by_reason: dict[tuple[str, str], list[str]] = {}
        for e in self.left:
            by_reason.setdefault((e.before, e.reason), []).append(e.name)
        for (before, reason), names in by_reason.items():
            lines.append(f"  {len(names):4d} x {before}: {reason}  e.g. {names[0] or '<root>'}")
        if self.changes_outputs:
            lines.append("outputs change: zero padding was replaced by reflect padding")
        if self.channels_last:
            lines.append("4-D weights moved to channels_last (outputs are channels_last tensors)")
        return "\n".join(lines)


# -------------------------------------------------------------------------------------------
# Fused GroupNorm for inputs of any rank
# -------------------------------------------------------------------------------------------
class FusedGroupNormNd(FusedGroupNorm):
    """:class:`FusedGroupNorm` that, like ``nn.GroupNorm``, takes (N, C, *) of any rank.

    Used where the caller's input rank is not known: diffusers' attention, for one, normalises a
    (N, C, L) sequence. Other ranks run as (N, C, L, 1), which has the same groups.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return super().forward(x)
        if x.dim() < 2:
            raise ValueError(f"GroupNorm expects (N, C, *), got shape {tuple(x.shape)}")
        return super().forward(x.reshape(x.shape[0], x.shape[1], -1, 1)).reshape(x.shape)


# -------------------------------------------------------------------------------------------
# Replacements for blocks whose forward changes as a whole
# -------------------------------------------------------------------------------------------
class FusedResnetBlock(nn.Module):
    """The LDM / FLUX ``ResnetBlock`` (no time embedding) with GN+SiLU fused.

        h = conv1(silu(norm1(x))); h = conv2(dropout(silu(norm2(h)))); return shortcut(x) + h

    Built by :func:`patch` from the original block's children, registered under the same names
    and in the same order, so the state_dict is unchanged. ``dropout`` exists only when the
    original had one (LDM does, FLUX does not); the shortcut is ``nin_shortcut`` (1x1) or
    ``conv_shortcut`` (3x3), present only when the widths differ.
    """

    def __init__(self, children: list[tuple[str, nn.Module]]):
        super().__init__()
        for name, child in children:
            self.add_module(name, child)
        self.shortcut_name = next((n for n, _ in children if n in ("nin_shortcut", "conv_shortcut")), None)
        self.has_dropout = any(n == "dropout" for n, _ in children)

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        if temb is not None:
            raise ValueError("this ResnetBlock has no time-embedding projection; temb must be None")
        h = self.conv1(self.norm1(x))
        h = self.norm2(h)
        if self.has_dropout:
            h = self.dropout(h)
        h = self.conv2(h)
        if self.shortcut_name is not None:
            x = getattr(self, self.shortcut_name)(x)
        return x + h


class ReflectDownsample(nn.Module):
    """The LDM stride-2 downsample with its one-pixel right/bottom pad by reflection.

    Holds a single :class:`ReflectConv2d` named ``conv`` with ``pad4=(0, 1, 0, 1)``, so it has
    the state_dict keys of diffusers' ``Downsample2D`` and of LDM's / FLUX's ``Downsample``.
    """

    def __init__(self, conv: ReflectConv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


# -------------------------------------------------------------------------------------------
# Structural tests (duck typing: class name + exact children + exact types)
# -------------------------------------------------------------------------------------------
def _cls(m: nn.Module) -> str:
    return type(m).__name__


def _has_hooks(m: nn.Module) -> bool:
    # nn.Module keeps its hooks in these dicts; a module that carries any is not swapped, since
    # the replacement would silently drop them.
    return any(
        len(getattr(m, attr, None) or ())
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_state_dict_hooks",
            "_load_state_dict_pre_hooks",
        )
    )


def _is_plain_gn(m: object) -> bool:
    return type(m) is nn.GroupNorm


def _is_silu(m: object) -> bool:
    return type(m) is nn.SiLU


def _is_pointwise_conv(m: object) -> bool:
    return (
        type(m) is nn.Conv2d
        and tuple(m.kernel_size) == (1, 1)
        and tuple(m.stride) == (1, 1)
        and tuple(m._reversed_padding_repeated_twice) == (0, 0, 0, 0)
        and tuple(m.dilation) == (1, 1)
        and m.groups == 1
    )


def _is_spatial_norm(m: nn.Module) -> bool:
    """diffusers' ``SpatialNorm`` or MoVQ's (without ``add_conv``): GN(f) * conv_y(up(zq)) + conv_b(up(zq))."""
    return (
        _cls(m) == "SpatialNorm"
        and type(m) is not SpatialNorm
        and dict(m.named_children()).keys() == {"norm_layer", "conv_y", "conv_b"}
        and not getattr(m, "add_conv", False)
        and _is_plain_gn(m.norm_layer)
        and _is_pointwise_conv(m.conv_y)
        and _is_pointwise_conv(m.conv_b)
    )


def _zero_padded_3x3(m: nn.Conv2d) -> bool:
    return (
        m.padding_mode == "zeros"
        and tuple(m.kernel_size) == (3, 3)
        and tuple(m._reversed_padding_repeated_twice) == (1, 1, 1, 1)
        and tuple(m.dilation) == (1, 1)
    )


def _ldm_downsample_conv(m: object) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.padding_mode == "zeros"
        and tuple(m.kernel_size) == (3, 3)
        and tuple(m.stride) == (2, 2)
        and tuple(m._reversed_padding_repeated_twice) == (0, 0, 0, 0)
        and tuple(m.dilation) == (1, 1)
        and m.groups == 1
    )


# -------------------------------------------------------------------------------------------
# Numerical probe for whole-forward replacements
# -------------------------------------------------------------------------------------------
def _probe_device_dtype(m: nn.Module) -> tuple[torch.device, torch.dtype] | None:
    p = next(m.parameters(), None)
    if p is None or p.device.type == "meta" or not p.is_floating_point():
        return None
    return p.device, p.dtype


@contextlib.contextmanager
def _eval_mode(m: nn.Module) -> Iterator[None]:
    modes = [(sub, sub.training) for sub in m.modules()]
    m.eval()
    try:
        yield
    finally:
        for sub, mode in modes:
            sub.training = mode


def _agrees(run_a: Callable[[Tensor], Tensor], run_b: Callable[[Tensor], Tensor], x: Tensor) -> bool:
    with torch.no_grad():
        a, b = run_a(x).float(), run_b(x).float()
    if a.shape != b.shape:
        return False
    # Loose enough for bf16 parameters, tight enough that a missing or misplaced SiLU, shortcut or
    # pad (an O(1) change) never passes.
    return bool(((a - b).abs().max() <= 1e-2 * a.abs().max() + 1e-3).item())


def _probe(module: nn.Module, replacement: Callable[[Tensor], Tensor], channels: int) -> str | None:
    """None when ``module(x) == replacement(x)`` on a random input; else why not (or 'unprobed')."""
    where = _probe_device_dtype(module)
    if where is None:
        return "unprobed"
    device, dtype = where
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(1, channels, 9, 9, generator=g).to(device=device, dtype=dtype)
    try:
        with _eval_mode(module):
            ok = _agrees(module, replacement, x)
    except (RuntimeError, ValueError, TypeError) as exc:  # it cannot even run the probe: not the known block
        return f"probe failed ({type(exc).__name__}: {exc})"
    return None if ok else "forward differs from the known LDM formula on a probe input"


# -------------------------------------------------------------------------------------------
# The walk
# -------------------------------------------------------------------------------------------
class _Patcher:
    def __init__(self, model: nn.Module, reflect_padding: bool, spatial_norm: bool):
        self.model = model
        self.reflect_padding = reflect_padding
        self.spatial_norm = spatial_norm
        self.report = PatchReport()
        self.done: set[int] = set()  # ids of modules already decided (replaced, created or consumed)
        self.retired: list[nn.Module] = []  # replaced modules, kept alive so their ids stay unique
        self._index()

    # -- bookkeeping ---------------------------------------------------------------------------
    def _index(self) -> None:
        """Where each module lives: (parent, attribute) for every occurrence, and its names."""
        self.places: dict[int, list[tuple[nn.Module, str]]] = collections.defaultdict(list)
        self.names: dict[int, str] = {}
        seen: set[tuple[int, str]] = set()
        for pname, parent in self.model.named_modules(remove_duplicate=False):
            # _modules, not named_children(): the latter hides a child registered twice in one parent
            for cname, child in parent._modules.items():
                if child is None or (id(parent), cname) in seen:  # a shared parent is walked per occurrence
                    continue
                seen.add((id(parent), cname))
                self.places[id(child)].append((parent, cname))
                self.names.setdefault(id(child), f"{pname}.{cname}" if pname else cname)

    def shared(self, m: nn.Module) -> bool:
        return len(self.places.get(id(m), ())) > 1

    def name(self, m: nn.Module) -> str:
        return self.names.get(id(m), "")

    def swap(self, old: nn.Module, new: nn.Module, reason: str) -> None:
        """Put ``new`` everywhere ``old`` is; record it."""
        new.training = old.training  # not recursive: reused children keep their own mode
        self.retired.append(old)
        for parent, attr in self.places[id(old)]:
            setattr(parent, attr, new)
        self.places[id(new)] = self.places.pop(id(old))
        self.names[id(new)] = self.names.get(id(old), "")
        self.done.update((id(old), id(new)))
        self.report.replaced.append(PatchEntry(self.name(new), _cls(old), _describe(new), reason))

    def leave(self, m: nn.Module, reason: str) -> None:
        self.done.add(id(m))
        self.report.left.append(PatchEntry(self.name(m), _cls(m), None, reason))

    def swappable(self, m: nn.Module) -> str | None:
        """Why ``m`` cannot be swapped for an equivalent module, or None."""
        if id(m) not in self.places:
            return "the root module cannot be replaced in place"
        if _has_hooks(m):
            return "has hooks, which a replacement would drop"
        return None

    def fusable(self, *mods: nn.Module) -> str | None:
        """Why these cannot take part in a GN+SiLU fusion (shared or hooked), or None."""
        for m in mods:
            if self.shared(m):
                return f"{self.name(m)} is shared with another module"
            why = self.swappable(m)
            if why:
                return f"{self.name(m)} {why}"
        return None

    # -- fused norm constructors -----------------------------------------------------------------
    def fuse_norm(self, norm: nn.Module, act: str | None, reason: str) -> None:
        """GroupNorm or SpatialNorm -> its fused version, with ``act`` folded in (or left, and why)."""
        why = self.swappable(norm)
        if why:
            self.leave(norm, why)
        elif _is_plain_gn(norm):
            self.swap(norm, _fused_gn(norm, act), reason)
        else:
            self.swap(norm, _fused_spatial_norm(norm, act), reason)
            # Its GroupNorm and 1x1 convs are now read by the fused kernel, not called.
            self.done.update(id(c) for c in norm.children())

    def drop_act(self, act: nn.Module, reason: str) -> None:
        self.swap(act, nn.Identity(), reason)

    # -- pass 1: blocks ------------------------------------------------------------------------
    def blocks(self) -> None:
        for _, m in list(self.model.named_modules()):
            if id(m) in self.done:
                continue
            cls = _cls(m)
            if cls == "ResnetBlock2D":
                self.diffusers_resnet(m)
            elif cls == "ResnetBlockCondNorm2D":
                self.diffusers_cond_resnet(m)
            elif cls in ("Encoder", "Decoder", "MaskConditionDecoder") and hasattr(m, "conv_norm_out"):
                self.diffusers_norm_out(m)
            elif type(m) is nn.Sequential:
                self.sequential(m)
            elif cls == "ResnetBlock" and _is_plain_gn(getattr(m, "norm1", None)):
                self.ldm_resnet(m)
            elif cls in ("Downsample", "Downsample2D") and self.reflect_padding:
                self.downsample(m)

    def diffusers_resnet(self, m: nn.Module) -> None:
        # forward: norm1 -> nonlinearity -> [up/down] -> conv1 -> [+temb] -> norm2 -> nonlinearity
        # -> dropout -> conv2. ``nonlinearity`` also runs on temb when time_emb_proj exists, and
        # "scale_shift" puts an affine between norm2 and the activation; every other
        # time_embedding_norm ("default", the VAE decoder's "group") applies norm2 directly.
        norms = (getattr(m, "norm1", None), getattr(m, "norm2", None))
        act = getattr(m, "nonlinearity", None)
        if not all(_is_plain_gn(n) for n in norms):
            return  # leave the children to the generic pass
        if getattr(m, "time_emb_proj", None) is not None:
            why = "time embedding goes through the same nonlinearity"
        elif getattr(m, "time_embedding_norm", None) == "scale_shift":
            why = "time_embedding_norm='scale_shift' acts between norm2 and SiLU"
        elif not _is_silu(act):
            why = f"nonlinearity is {_cls(act) if act is not None else None}, not nn.SiLU"
        else:
            why = self.fusable(*norms, act)
        if why:
            for n in norms:
                self.fuse_norm(n, None, f"plain GN: SiLU not fused in ResnetBlock2D ({why})")
            return
        for n in norms:
            self.fuse_norm(n, "silu", "ResnetBlock2D: GN then nonlinearity (SiLU)")
        self.drop_act(act, "ResnetBlock2D: SiLU folded into norm1 and norm2")

    def diffusers_cond_resnet(self, m: nn.Module) -> None:
        # forward: norm1(x, temb) -> nonlinearity -> ... conv1 -> norm2(h, temb) -> nonlinearity ...
        norms = (getattr(m, "norm1", None), getattr(m, "norm2", None))
        act = getattr(m, "nonlinearity", None)
        if not all(n is not None and _is_spatial_norm(n) for n in norms):
            return  # AdaGroupNorm and others: the generic pass reports them
        if not self.spatial_norm:
            return
        why = "nonlinearity is not nn.SiLU" if not _is_silu(act) else self.fusable(*norms, act)
        if why:
            for n in norms:
                self.fuse_norm(n, None, f"fused SpatialNorm without SiLU ({why})")
            return
        for n in norms:
            self.fuse_norm(n, "silu", "ResnetBlockCondNorm2D: SpatialNorm then nonlinearity (SiLU)")
        self.drop_act(act, "ResnetBlockCondNorm2D: SiLU folded into norm1 and norm2")

    def diffusers_norm_out(self, m: nn.Module) -> None:
        # forward ends with conv_norm_out -> conv_act -> conv_out; conv_act is used nowhere else.
        norm, act = m.conv_norm_out, getattr(m, "conv_act", None)
        spatial = _is_spatial_norm(norm)
        if not (_is_plain_gn(norm) or (spatial and self.spatial_norm)):
            return
        why = "conv_act is not nn.SiLU" if not _is_silu(act) else self.fusable(norm, act)
        if why:
            self.fuse_norm(norm, None, f"{_cls(m)}.conv_norm_out: SiLU not fused ({why})")
            return
        self.fuse_norm(norm, "silu", f"{_cls(m)}: conv_norm_out then conv_act (SiLU)")
        self.drop_act(act, f"{_cls(m)}: conv_act folded into conv_norm_out")

    def sequential(self, m: nn.Sequential) -> None:
        items = [c for c in m._modules.values() if c is not None]  # in call order, repeats included
        for a, b in itertools.pairwise(items):
            if id(a) in self.done or id(b) in self.done:
                continue
            if _is_plain_gn(a) and _is_silu(b) and self.fusable(a, b) is None:
                self.fuse_norm(a, "silu", "nn.Sequential: GroupNorm then SiLU")
                self.drop_act(b, "nn.Sequential: SiLU folded into the preceding GroupNorm")

    def ldm_resnet(self, m: nn.Module) -> None:
        # LDM (ldm/modules/diffusionmodules/model.py) and FLUX (flux/modules/autoencoder.py): SiLU
        # is a function call inside forward, so the block is replaced as a whole.
        children = list(m.named_children())
        names = [n for n, _ in children]
        core = {"norm1", "conv1", "norm2", "conv2"}
        optional = {"dropout", "nin_shortcut", "conv_shortcut"}
        kids = dict(children)
        why = None
        if not core <= set(names) or not set(names) <= core | optional:
            why = f"children {names} are not the LDM/FLUX ResnetBlock's (a time embedding?)"
        elif not (_is_plain_gn(kids["norm2"]) and type(kids["conv1"]) in (nn.Conv2d, ReflectConv2d)):
            why = "norm2 / conv1 are not a GroupNorm / Conv2d"
        elif "dropout" in kids and type(kids["dropout"]) is not nn.Dropout:
            why = "dropout is not nn.Dropout"
        elif ("nin_shortcut" in kids or "conv_shortcut" in kids) == (
            getattr(m, "in_channels", None) == getattr(m, "out_channels", None)
        ):
            why = "shortcut presence does not match in_channels != out_channels"
        else:
            why = self.swappable(m) or self.fusable(kids["norm1"], kids["norm2"])
        if why is None:
            fused = [(n, _fused_gn(c, "silu") if n in ("norm1", "norm2") else c) for n, c in children]
            block = FusedResnetBlock(fused)
            probe = _probe(m, block, m.norm1.num_channels)
            if probe is None or probe == "unprobed":
                reason = "LDM/FLUX ResnetBlock: GN+SiLU fused (norm1, norm2)"
                self.swap(m, block, reason + (" [not probed: no real parameters]" if probe else ""))
                for n, c in fused:
                    if n in ("norm1", "norm2"):
                        self.done.add(id(c))
                        self.report.replaced.append(
                            PatchEntry(f"{self.name(block)}.{n}", "GroupNorm", _describe(c), reason)
                        )
                return
            why = probe
        self.leave(m, f"ResnetBlock not fused: {why}; its norms get plain fused GN")

    def downsample(self, m: nn.Module) -> None:
        children = dict(m.named_children())
        conv = children.get("conv")
        if conv is None or not _ldm_downsample_conv(conv):
            return  # avg-pool or padded-conv downsamples: nothing of the LDM pad to convert
        why = None
        if children.keys() != {"conv"}:
            why = f"children {sorted(children)} besides conv"
        elif not _pads_explicitly(m):
            why = "does not look like an explicit-pad downsample (use_conv/padding/with_conv/padding_mode)"
        else:
            why = self.swappable(m) or self.fusable(conv)
        if why is None:
            new = ReflectDownsample(ReflectConv2d.from_conv(conv, pad4=LDM_DOWNSAMPLE_PAD))

            def zero_padded(x: Tensor) -> Tensor:
                return F.conv2d(F.pad(x, LDM_DOWNSAMPLE_PAD), conv.weight, conv.bias, stride=2)

            probe = _probe(m, zero_padded, conv.in_channels)
            if probe is None or probe == "unprobed":
                self.done.add(id(conv))
                self.swap(
                    m,
                    new,
                    "LDM downsample pad (0, 1, 0, 1): zeros -> reflect"
                    + (" [not probed: no real parameters]" if probe else ""),
                )
                self.done.add(id(new.conv))
                self.report.changes_outputs = True
                return
            why = probe
        self.leave(m, f"downsample pad left as zeros: {why}")

    # -- pass 2: single layers -----------------------------------------------------------------
    def layers(self) -> None:
        for _, m in list(self.model.named_modules()):
            if id(m) in self.done:
                continue
            if _is_plain_gn(m):
                why = self.swappable(m)
                if why:
                    self.leave(m, why)
                else:
                    self.swap(m, FusedGroupNormNd.from_group_norm(m), "GroupNorm (input rank not known: any rank)")
            elif _is_spatial_norm(m):
                why = self.swappable(m) or (None if self.spatial_norm else "spatial_norm=False")
                if why:
                    self.leave(m, why)  # its inner GroupNorm is still fused on its own
                else:
                    self.fuse_norm(m, None, "SpatialNorm")
            elif _cls(m) in ("AdaGroupNorm", "SpatialNorm") and type(m) is not SpatialNorm:
                self.leave(m, "not the known structure (F.group_norm inside, or an extra conv on zq)")
            elif type(m) is nn.Conv2d and m.padding_mode == "reflect":
                why = self.swappable(m)
                if why:
                    self.leave(m, why)
                else:
                    self.swap(m, ReflectConv2d.from_conv(m), "Conv2d(padding_mode='reflect')")
            elif type(m) is nn.Conv2d and _zero_padded_3x3(m):
                why = self.swappable(m) if self.reflect_padding else "zero padding kept (reflect_padding=False)"
                if why:
                    self.leave(m, why)
                else:
                    self.swap(m, ReflectConv2d.from_conv(m), "3x3 conv: zero padding -> reflect")
                    self.report.changes_outputs = True
            elif isinstance(m, nn.GroupNorm) and not isinstance(m, FusedGroupNorm):
                self.leave(m, "a GroupNorm subclass with its own forward")
            elif (
                isinstance(m, nn.Conv2d)
                and not isinstance(m, ReflectConv2d)
                and (m.padding_mode == "reflect" or (self.reflect_padding and _zero_padded_3x3(m)))
            ):
                self.leave(m, "a Conv2d subclass (or parametrized conv) with its own forward")


def _pads_explicitly(m: nn.Module) -> bool:
    """The attributes that make each known downsample pad (0, 1, 0, 1) with zeros in forward."""
    if _cls(m) == "Downsample2D":  # diffusers: pads when use_conv and padding == 0, then optional norm first
        return bool(getattr(m, "use_conv", False)) and getattr(m, "padding", None) == 0 and m.norm is None
    if hasattr(m, "with_conv"):  # LDM / FLUX (FLUX has no with_conv switch, see below)
        return bool(m.with_conv)
    if hasattr(m, "padding_mode"):  # vivat's own Downsample
        return m.padding_mode == "zeros"
    return True  # FLUX's Downsample always pads; the probe confirms it


def _fused_gn(gn: nn.GroupNorm, act: str | None) -> FusedGroupNorm:
    new = FusedGroupNorm.from_group_norm(gn, act=act)
    new.training = gn.training
    return new


def _fused_spatial_norm(m: nn.Module, act: str | None) -> SpatialNorm:
    """A vivat SpatialNorm holding ``m``'s own norm_layer / conv_y / conv_b (shared, not copied)."""
    gn = m.norm_layer
    with torch.device("meta"):  # placeholders only; replaced by m's children below
        new = SpatialNorm(gn.num_channels, m.conv_y.in_channels, num_groups=gn.num_groups, eps=gn.eps, act=act)
    new.norm_layer, new.conv_y, new.conv_b = gn, m.conv_y, m.conv_b
    return new


def _describe(m: nn.Module) -> str:
    act = getattr(m, "act", None)
    if isinstance(m, (FusedGroupNorm, SpatialNorm)) and act:
        return f"{_cls(m)}(act={act!r})"
    if isinstance(m, ReflectConv2d) and m.pad4 is not None:
        return f"{_cls(m)}(pad4={m.pad4})"
    return _cls(m)


# -------------------------------------------------------------------------------------------
# Public entry point
# -------------------------------------------------------------------------------------------
def patch(
    model: nn.Module, *, reflect_padding: bool = False, spatial_norm: bool = True, channels_last: bool = False
) -> PatchReport:
    """Swap fused layers into ``model`` in place; return what was replaced and what was left, and why.

    Args:
        model: any ``nn.Module`` (a diffusers ``AutoencoderKL`` / ``VQModel``, an LDM or FLUX
            autoencoder, a UNet...). Its parameters are shared with the new layers, never copied,
            and ``model.state_dict()`` keeps its keys.
        reflect_padding: also switch zero-padded 3x3 convs and the LDM downsample pad to reflect
            padding. This changes outputs (it is the VIVAT padding fix); the report says so
            (``changes_outputs``).
        spatial_norm: replace diffusers / MoVQ ``SpatialNorm`` by the fused one, whose 1x1 convs
            run at the latent's resolution (the same values up to float rounding).
        channels_last: also move every 4-D parameter and buffer (the conv weights) to the
            channels_last memory format, in place (the same ``Parameter`` objects, new storage).
            Convs then run NHWC end to end -- oneDNN on CPU and cuDNN in bf16/fp16 prefer it and
            otherwise reorder around every call -- and the fused norms read that layout directly.
            Outputs become channels_last tensors with the same values up to float rounding. On two
            CPU cores the SD-VAE decode gains about a third from it (``bench/bench_patch.py``),
            far more than its GroupNorms, about 1.5% of that decode, can give.

    Without ``reflect_padding`` the patched model computes the same function as before up to
    float rounding, with the same gradients, and stays ``torch.compile(fullgraph=True)``-able.
    """
    patcher = _Patcher(model, reflect_padding=reflect_padding, spatial_norm=spatial_norm)
    keys_before = [(k, v.data_ptr() if v.device.type != "meta" else None) for k, v in model.state_dict().items()]
    patcher.blocks()
    patcher._index()  # blocks may have replaced modules; re-read the tree before the leaf pass
    patcher.layers()
    keys_after = [(k, v.data_ptr() if v.device.type != "meta" else None) for k, v in model.state_dict().items()]
    if keys_after != keys_before:  # an internal error, never an expected outcome
        raise RuntimeError("patch changed the model's state_dict; this is a bug in vivat_kernels.patch")
    if channels_last:
        model.to(memory_format=torch.channels_last)
        patcher.report.channels_last = True
    return patcher.report
