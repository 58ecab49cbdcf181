"""Configuration of a VIVAT / LDM KL-VAE: architecture, artifact fixes and training-loss recipe.

Two frozen dataclasses:

* :class:`VAEConfig` -- the architecture and the two architectural fixes (``padding_mode``,
  ``scn``), with the loss recipe nested as ``loss``;
* :class:`LossConfig` -- the loss weights, the discriminator and the schedule (``disc_start``,
  ``decoder_only_from``).

Every VIVAT fix is one field, so an ablation is one ``replace`` call::

    cfg = VAEConfig.from_preset("vivat-f8c16")
    cfg.replace(padding_mode="zeros")       # no reflect padding
    cfg.replace(scn=False)                  # plain GroupNorm in the decoder
    cfg.replace(kl_weight=1e-6)             # baseline KL weight (loss fields route to ``loss``)
    cfg.replace(adaptive_weight_max=LDM_ADAPTIVE_WEIGHT_MAX)  # baseline cap
    cfg.replace(decoder_only_from=None)     # no decoder-only stage

Loss scale: every weight below is in the **mean** reduction documented in :mod:`vivat.losses`
(L1 and LPIPS averaged over pixels and batch, KL summed over latent elements and divided by the
number of image elements C*H*W). The derivation that maps LDM's summed weights onto it is
written there and next to :data:`LDM_ADAPTIVE_WEIGHT_MAX`.

Presets (``VAEConfig.from_preset``):

=============  ====  ============  ====  ==  =========  ===  ==========================
name           ch    ch_mult       res   z   padding    scn  loss
=============  ====  ============  ====  ==  =========  ===  ==========================
vivat-f8c16    128   (1, 2, 4, 4)  2     16  reflect    yes  VIVAT (full schedule)
ldm-f8c16      128   (1, 2, 4, 4)  2     16  zeros      no   LDM baseline
ldm-f8c4       128   (1, 2, 4, 4)  2     4   zeros      no   LDM baseline
vivat-tiny     32    (1, 2, 2, 4)  1     16  reflect    yes  VIVAT (short schedule)
ldm-tiny       32    (1, 2, 2, 4)  1     16  zeros      no   LDM baseline (short)
=============  ====  ============  ====  ==  =========  ===  ==========================

The tiny presets keep the f8 stride (four levels) so latents, artifacts (an 8-pixel grid) and
tooling behave as at full size, but use 32 base channels, one ResNet block per level and 8 norm
groups (32 groups of 1-4 channels would turn GroupNorm into InstanceNorm); about 3.1 M parameters,
so a 64-pixel crop trains on a laptop CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

PADDING_MODES = ("zeros", "reflect")
DISC_NORMS = ("group", "batch")

# LDM's reference training crop: 256 x 256 RGB, i.e. this many summed elements per sample.
LDM_ELEMENTS_PER_SAMPLE = 3 * 256 * 256

# LDM clamps its adaptive weight to [0, 1e4]. That weight is the ratio of the gradient of the
# *summed* reconstruction loss to that of the (mean) generator loss; ours uses the mean
# reconstruction loss, so our weight is LDM's divided by the summed element count and the same
# clamp reads 1e4 / (3 * 256 * 256) ~= 0.0509 in our scale at LDM's 256-px training crops.
LDM_ADAPTIVE_WEIGHT_MAX = 1e4 / LDM_ELEMENTS_PER_SAMPLE


@dataclass(frozen=True)
class LossConfig:
    """Weights and schedule of ``L1 + p*LPIPS + kl*KL + adv*w*L_G`` (mean scale, see module doc).

    ``adaptive_weight_max`` caps the LDM adaptive weight ``w`` (clamped to ``[0, cap]``).
    ``disc_start`` is the first step (0-based) at which the discriminator trains and the generator
    sees the adversarial term. ``decoder_only_from`` is the fraction of the total training steps
    after which the encoder and ``quant_conv`` are frozen and only the decoder trains (None: no
    such stage); see :meth:`decoder_only_step`.
    """

    l1_weight: float = 1.0
    perceptual_weight: float = 1.0
    kl_weight: float = 1e-6
    adv_weight: float = 0.5
    adaptive_weight_max: float = LDM_ADAPTIVE_WEIGHT_MAX
    disc_start: int = 50001
    disc_layers: int = 3
    disc_channels: int = 64
    disc_norm: str = "group"
    decoder_only_from: float | None = None

    def __post_init__(self) -> None:
        _check_types(self, _LOSS_TYPES)
        for name in ("l1_weight", "perceptual_weight", "kl_weight", "adv_weight", "adaptive_weight_max"):
            if not float(getattr(self, name)) >= 0:  # also refuses NaN
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if int(self.disc_start) < 0:
            raise ConfigError(f"disc_start must be >= 0, got {self.disc_start}")
        for name in ("disc_layers", "disc_channels"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.disc_norm not in DISC_NORMS:
            raise ConfigError(f"disc_norm must be one of {DISC_NORMS}, got {self.disc_norm!r}")
        if self.decoder_only_from is not None and not 0.0 < float(self.decoder_only_from) <= 1.0:
            raise ConfigError(f"decoder_only_from is a fraction in (0, 1] or None, got {self.decoder_only_from}")

    def decoder_only_step(self, total_steps: int) -> int | None:
        """The first step of the decoder-only stage in a run of ``total_steps``, or None."""
        if self.decoder_only_from is None:
            return None
        return round(float(self.decoder_only_from) * int(total_steps))


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of the KL-VAE plus the VIVAT switches; ``loss`` holds the training recipe.

    ``padding_mode`` applies to every 3x3 conv and to the (0, 1, 0, 1) pad of the stride-2
    downsample; ``scn`` puts spatially conditional norms (conditioned on the latent) in every
    decoder norm, its scale and shift computed from the latent by ``scn_kernel`` x ``scn_kernel``
    convs (1 as in MoVQ; 3: reflect-padded, so a latent cell's neighbours take part). ``scaling_factor`` / ``shift_factor`` are not used by the VAE itself; they are
    kept for the diffusion side, which feeds ``(z - shift_factor) * scaling_factor``.
    """

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    mid_attn: bool = True
    norm_groups: int = 32
    padding_mode: str = "reflect"
    scn: bool = True
    scn_kernel: int = 1
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        # Accept lists (from JSON) and dicts for ``loss``; store canonical types.
        if not isinstance(self.ch_mult, (list, tuple)) or not all(_is_int(m) for m in self.ch_mult):
            raise ConfigError(f"ch_mult must be a list of positive integers, got {_show(self.ch_mult)}")
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        if isinstance(self.loss, dict):
            try:
                object.__setattr__(self, "loss", LossConfig(**self.loss))
            except TypeError as err:  # an unknown key
                raise ConfigError(f"loss: {err}") from err
            except ConfigError as err:
                raise ConfigError(f"loss.{err}") from err
        if not isinstance(self.loss, LossConfig):
            raise ConfigError(f"loss must be a LossConfig or an object of loss fields, got {_show(self.loss)}")
        _check_types(self, _ARCH_TYPES)
        if self.padding_mode not in PADDING_MODES:
            raise ConfigError(f"padding_mode must be one of {PADDING_MODES}, got {self.padding_mode!r}")
        if self.scn_kernel not in (1, 3):
            raise ConfigError(f"scn_kernel must be 1 or 3, got {self.scn_kernel}")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ConfigError(f"ch_mult must be a non-empty tuple of positive ints, got {self.ch_mult}")
        for name in ("in_channels", "out_channels", "ch", "z_channels", "norm_groups"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_res_blocks < 1:
            raise ConfigError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        for width in sorted({self.ch * m for m in self.ch_mult}):
            if width % self.norm_groups:
                raise ConfigError(f"channel width {width} is not divisible by norm_groups={self.norm_groups}")

    # ---------------------------------------------------------------------------------------
    @property
    def downsample_factor(self) -> int:
        """Spatial stride of the latent (8 for four levels)."""
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_preset(cls, name: str) -> VAEConfig:
        """The named preset (see the module docstring); ValueError lists the valid names."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(preset_names())}")
        return PRESETS[name]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists; ``loss`` a nested dict)."""
        d = dataclasses.asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | os.PathLike | None = None) -> VAEConfig:
        """Inverse of :meth:`to_dict`; anything that is not a valid config raises :class:`ConfigError`
        naming the field (unknown keys included: a typo is not ignored), prefixed by ``source``
        (e.g. the file it was read from) when given."""
        prefix = f"{source}: " if source is not None else ""
        if not isinstance(d, dict):
            raise ConfigError(f"{prefix}expected an object of config fields, got {_show(d)}")
        d = dict(d)
        try:
            _check_keys(cls, d, "VAEConfig")
            loss = d.pop("loss", None)
            if loss is not None:
                if not isinstance(loss, dict):
                    raise ConfigError(f"loss must be an object of loss fields, got {_show(loss)}")
                loss = dict(loss)
                _check_keys(LossConfig, loss, "LossConfig")
                try:
                    d["loss"] = LossConfig(**loss)
                except ConfigError as err:
                    raise ConfigError(f"loss.{err}") from err
            return cls(**d)
        except ConfigError as err:
            if not prefix:
                raise
            raise ConfigError(f"{prefix}{err}") from err

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> VAEConfig:
        """Read a ``config.json``; an unreadable file, bad JSON or a bad field raises :class:`ConfigError`
        naming the file (and the field)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path} cannot be read as text ({err})") from err
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                "expected a vivat model config as written by save_pretrained"
            ) from err
        return cls.from_dict(d, source=path)

    def replace(self, **changes: Any) -> VAEConfig:
        """A copy with ``changes``; ``LossConfig`` field names are routed into ``loss``."""
        arch_names = {f.name for f in dataclasses.fields(VAEConfig)}
        loss_names = {f.name for f in dataclasses.fields(LossConfig)}
        unknown = sorted(set(changes) - arch_names - loss_names)
        if unknown:
            raise ValueError(
                f"unknown config field(s) {unknown}; valid: {sorted(arch_names)} and loss fields {sorted(loss_names)}"
            )
        loss_changes = {k: v for k, v in changes.items() if k in loss_names}
        arch_changes = {k: v for k, v in changes.items() if k in arch_names}
        loss = arch_changes.pop("loss", self.loss)
        if isinstance(loss, dict):
            loss = LossConfig(**loss)
        if loss_changes:
            loss = dataclasses.replace(loss, **loss_changes)
        return dataclasses.replace(self, loss=loss, **arch_changes)


def _check_keys(cls: type, d: dict[str, Any], what: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {what} field(s) {unknown}; valid: {sorted(names)}")


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _show(v: Any) -> str:
    """``'32' (a string)``: a value and its JSON-ish kind, for messages about wrong types."""
    kinds = {
        str: "a string",
        bool: "a boolean",
        list: "a list",
        tuple: "a list",
        dict: "an object",
        float: "a number",
        int: "an integer",
    }
    kind = "null" if v is None else kinds.get(type(v), type(v).__name__)
    text = repr(v)
    return f"{text[:60] + '...' if len(text) > 60 else text} ({kind})"


# The JSON kind each field needs: "int" (no bool, no float), "real" (int or float, no bool), "bool",
# "str", "real?" (a real or null). Checked before any value is used, so ``"ch": "32"`` is named.
_ARCH_TYPES = {
    "in_channels": "int",
    "out_channels": "int",
    "ch": "int",
    "num_res_blocks": "int",
    "z_channels": "int",
    "mid_attn": "bool",
    "norm_groups": "int",
    "padding_mode": "str",
    "scn": "bool",
    "scn_kernel": "int",
    "scaling_factor": "real",
    "shift_factor": "real",
}
_LOSS_TYPES = {
    "l1_weight": "real",
    "perceptual_weight": "real",
    "kl_weight": "real",
    "adv_weight": "real",
    "adaptive_weight_max": "real",
    "disc_start": "int",
    "disc_layers": "int",
    "disc_channels": "int",
    "disc_norm": "str",
    "decoder_only_from": "real?",
}
_KIND_TEST = {
    "int": (_is_int, "an integer"),
    "real": (_is_real, "a finite number"),
    "real?": (lambda v: v is None or _is_real(v), "a finite number or null"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
}


def _check_types(obj: Any, kinds: dict[str, str]) -> None:
    for name, kind in kinds.items():
        test, expected = _KIND_TEST[kind]
        value = getattr(obj, name)
        if not test(value):
            raise ConfigError(f"{name} must be {expected}, got {_show(value)}")


# Field names must not clash, or ``replace`` could not route them.
assert not ({f.name for f in dataclasses.fields(VAEConfig)} & {f.name for f in dataclasses.fields(LossConfig)})


# -------------------------------------------------------------------------------------------
# Loss recipes (mean scale; see vivat.losses for the derivation from LDM's summed weights)
# -------------------------------------------------------------------------------------------
# LDM kl-f8 recipe: kl_weight 1e-6, disc_weight 0.5, perceptual 1.0, disc_start 50001. Because our
# KL term is divided by the same element count that turns LDM's summed L1 into a mean, the three
# weights carry over unchanged; only the adaptive-weight clamp changes unit.
LDM_LOSS = LossConfig(
    l1_weight=1.0,
    perceptual_weight=1.0,
    kl_weight=1e-6,
    adv_weight=0.5,
    adaptive_weight_max=LDM_ADAPTIVE_WEIGHT_MAX,
    disc_start=50001,
    decoder_only_from=None,
)

# VIVAT [chosen values, untuned]: KL ten times lower (less blur); adversarial weight kept at the
# moderate 0.5 but the adaptive weight capped five times tighter than LDM's clamp (grid); the last
# 10% of the steps train the decoder only (colour shift).
VIVAT_LOSS = dataclasses.replace(LDM_LOSS, kl_weight=1e-7, adaptive_weight_max=0.01, decoder_only_from=0.9)

# Tiny presets: the same weights on a short schedule. The discriminator starts at step 600, 60% of
# a 1000-step run (bench/results/recipe-2026-11-29-cpu.md: the reconstruction has settled by then,
# so the adversarial term acts on a model worth sharpening, inside the run); `vivat demo` sets it
# to 60% of its own steps.
_TINY_DISC_START = 600

_FULL_ARCH = {"ch": 128, "ch_mult": (1, 2, 4, 4), "num_res_blocks": 2, "mid_attn": True, "norm_groups": 32}
_TINY_ARCH = {"ch": 32, "ch_mult": (1, 2, 2, 4), "num_res_blocks": 1, "mid_attn": True, "norm_groups": 8}
_FIXES = {"padding_mode": "reflect", "scn": True}
_NO_FIXES = {"padding_mode": "zeros", "scn": False}

PRESETS: dict[str, VAEConfig] = {
    "vivat-f8c16": VAEConfig(**_FULL_ARCH, z_channels=16, **_FIXES, loss=VIVAT_LOSS),
    "ldm-f8c16": VAEConfig(**_FULL_ARCH, z_channels=16, **_NO_FIXES, loss=LDM_LOSS),
    "ldm-f8c4": VAEConfig(**_FULL_ARCH, z_channels=4, **_NO_FIXES, loss=LDM_LOSS),
    "vivat-tiny": VAEConfig(
        **_TINY_ARCH, z_channels=16, **_FIXES, loss=dataclasses.replace(VIVAT_LOSS, disc_start=_TINY_DISC_START)
    ),
    "ldm-tiny": VAEConfig(
        **_TINY_ARCH, z_channels=16, **_NO_FIXES, loss=dataclasses.replace(LDM_LOSS, disc_start=_TINY_DISC_START)
    ),
}


def preset_names() -> list[str]:
    """Names accepted by :meth:`VAEConfig.from_preset`."""
    return list(PRESETS)
