"""Weights in and out of vivat's :class:`~vivat.model.AutoencoderKL`, and the VIVAT retrofit.

    model = from_ldm("sd-v1-5.ckpt")                  # LDM / CompVis .ckpt, FLUX ae.safetensors
    model = from_diffusers("stabilityai/sdxl-vae/")   # a diffusers folder, model or state dict
    to_diffusers(model, "out/diffusers-vae")          # AutoencoderKL.from_pretrained reads it
    vivat_model = vivatize(model, scn=True, reflect=True)

Naming. vivat's own names are LDM's (``encoder.down.0.block.1.norm1.weight``), so LDM, CompVis
and FLUX files map one to one after stripping a ``first_stage_model.`` or ``vae.`` prefix. Diffusers
names map by one table read in both directions (:data:`KEY_PREFIXES`, :data:`KEY_INFIXES`):
``down_blocks.i.resnets.j`` <-> ``down.i.block.j``, ``mid_block.resnets.0/1`` <-> ``mid.block_1/2``,
``conv_norm_out`` <-> ``norm_out``, ``conv_shortcut`` <-> ``nin_shortcut``, the attention's
``to_q/to_k/to_v/to_out.0`` (or the old ``query/key/value/proj_attn``, Linear (C, C) or 1x1-conv
(C, C, 1, 1) weights) <-> ``q/k/v/proj_out``, and the decoder's ``up_blocks`` are in reverse order
(``up_blocks.0`` is LDM's ``up.{L-1}``, the lowest resolution). SCN norms keep the MoVQ / diffusers
names (``norm1.norm_layer``, ``conv_y``, ``conv_b``; the mid attention's is
``spatial_norm``, as in diffusers' spatial-norm decoder).

Checks. Every key and shape is compared with the model the config describes
(:func:`vivat.model.check_state_dict`) and loaded with ``strict=True``; the only keys ever left out
are named: the training loss (``loss.*``: LPIPS and discriminator) of a CompVis autoencoder
checkpoint, and everything outside the ``first_stage_model.`` / ``vae.`` prefix of a full pipeline
checkpoint. Models without ``quant_conv`` / ``post_quant_conv`` (FLUX, SD3) get exact identity 1x1
convs; :func:`to_diffusers` writes identity convs back as ``use_quant_conv=False``.

Latent factors. ``scaling_factor`` / ``shift_factor`` go into the config: from a diffusers
``config.json``, from ``family`` (:data:`LATENT_FACTORS`), or, for an LDM file, guessed from the
rest of a full pipeline checkpoint (SD, SDXL, SD3, FLUX keys). Otherwise they stay 1.0 / 0.0.

Config. Inferred from the weights when not given (widths, levels, blocks, z channels, attention,
SCN). The GroupNorm group count is not in the weights: 32 (SD / SDXL / SD3 / FLUX) unless a
diffusers config or ``config`` says otherwise; the padding mode is zeros unless the config says so.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import PRESETS, VAEConfig
from .errors import ConfigError, WeightsError
from .model import AutoencoderKL, ModelFileNotFoundError, check_state_dict, read_safetensors, write_safetensors

# (scaling_factor, shift_factor) of the latent families; the diffusion side feeds (z - shift) * scale.
LATENT_FACTORS: dict[str, tuple[float, float]] = {
    "sd": (0.18215, 0.0),
    "sdxl": (0.13025, 0.0),
    "sd3": (1.5305, 0.0609),
    "flux": (0.3611, 0.1159),
}

DIFFUSERS_CONFIG = "config.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
VIVAT_CONFIG_KEY = "_vivat"  # diffusers ignores config keys that start with "_"

_PIPELINE_PREFIXES = ("first_stage_model.", "vae.")
# Keys of the rest of a pipeline checkpoint that identify the latent family.
_FAMILY_HINTS = (
    ("model.diffusion_model.joint_blocks.", "sd3"),
    ("model.diffusion_model.double_blocks.", "flux"),
    ("conditioner.embedders.", "sdxl"),
    ("cond_stage_model.", "sd"),
)
_ATTN_WEIGHT = re.compile(r"\.attn_1\.(q|k|v|proj_out)\.weight$")


# -------------------------------------------------------------------------------------------
# Reading weights
# -------------------------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin`` file
    (``torch.load(weights_only=True)``: no arbitrary unpickling; a Lightning checkpoint's
    ``state_dict`` entry is taken)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileNotFoundError(f"{path} is not a file")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's text would suggest weights_only=False: not for weights
        raise WeightsError(
            f"{path} cannot be read as weights with torch.load(weights_only=True): it is damaged, not a torch "
            "file, or holds pickled objects besides tensors; re-save its state_dict as .safetensors"
        ) from exc
    except Exception as exc:
        # torch's message goes on to advise weights_only=False, which this reader never does
        if "Weights only load failed" in str(exc):
            detail = "it holds Python objects besides tensors; re-save its state_dict as .safetensors"
        else:
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
            detail = f"{type(exc).__name__}: {first}; give a .safetensors, .ckpt, .pt or .bin file of VAE weights"
        raise WeightsError(f"{path} cannot be read with torch.load(weights_only=True) ({detail})") from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def _as_state_dict(source: str | os.PathLike | Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    if isinstance(source, Mapping):
        return dict(source), "state dict"
    return read_state_dict(source), str(source)


# -------------------------------------------------------------------------------------------
# Key mapping: LDM (vivat) <-> diffusers
# -------------------------------------------------------------------------------------------
def _levels(keys: list[str], pattern: str) -> int:
    found = {int(m[1]) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


# One table for both directions: (vivat / LDM prefix, diffusers prefix), most specific first.
# ``{part}`` is ``encoder`` or ``decoder``, ``{i}`` a resolution level in LDM's order (0: full
# resolution) and ``{j}`` a block index; diffusers counts the decoder's up blocks from the lowest
# resolution, ``{u}`` = levels - 1 - ``{i}``. Keys that match no prefix (``conv_in``, ``conv_out``,
# ``quant_conv``...) are named alike in both.
KEY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("encoder.down.{i}.block.{j}.", "encoder.down_blocks.{i}.resnets.{j}."),
    ("encoder.down.{i}.downsample.", "encoder.down_blocks.{i}.downsamplers.0."),
    ("decoder.up.{i}.block.{j}.", "decoder.up_blocks.{u}.resnets.{j}."),
    ("decoder.up.{i}.upsample.", "decoder.up_blocks.{u}.upsamplers.0."),
    ("{part}.mid.block_1.", "{part}.mid_block.resnets.0."),
    ("{part}.mid.block_2.", "{part}.mid_block.resnets.1."),
    ("{part}.mid.attn_1.norm.norm_layer.", "{part}.mid_block.attentions.0.spatial_norm.norm_layer."),
    ("{part}.mid.attn_1.norm.conv_y.", "{part}.mid_block.attentions.0.spatial_norm.conv_y."),
    ("{part}.mid.attn_1.norm.conv_b.", "{part}.mid_block.attentions.0.spatial_norm.conv_b."),
    ("{part}.mid.attn_1.norm.", "{part}.mid_block.attentions.0.group_norm."),
    ("{part}.mid.attn_1.q.", "{part}.mid_block.attentions.0.to_q."),
    ("{part}.mid.attn_1.k.", "{part}.mid_block.attentions.0.to_k."),
    ("{part}.mid.attn_1.v.", "{part}.mid_block.attentions.0.to_v."),
    ("{part}.mid.attn_1.proj_out.", "{part}.mid_block.attentions.0.to_out.0."),
    ("{part}.norm_out.", "{part}.conv_norm_out."),
)
# Parts of a name renamed wherever they occur (inside the blocks matched above).
KEY_INFIXES: tuple[tuple[str, str], ...] = ((".nin_shortcut.", ".conv_shortcut."),)
# Older diffusers attention names, read as the current ones.
DIFFUSERS_ALIASES: tuple[tuple[str, str], ...] = (
    (".mid_block.attentions.0.query.", ".mid_block.attentions.0.to_q."),
    (".mid_block.attentions.0.key.", ".mid_block.attentions.0.to_k."),
    (".mid_block.attentions.0.value.", ".mid_block.attentions.0.to_v."),
    (".mid_block.attentions.0.proj_attn.", ".mid_block.attentions.0.to_out.0."),
)
_FIELD = re.compile(r"\{(part|i|j|u)\}")
_FIELD_PATTERN = {"part": "(?P<part>encoder|decoder)", "i": r"(?P<i>\d+)", "j": r"(?P<j>\d+)", "u": r"(?P<u>\d+)"}


def _prefix_rules(pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[re.Pattern[str], str], ...]:
    """(compiled source prefix, target template) for each pair of templates."""
    rules = []
    for source, target in pairs:
        pattern = "".join(
            _FIELD_PATTERN[piece] if n % 2 else re.escape(piece) for n, piece in enumerate(_FIELD.split(source))
        )
        rules.append((re.compile(pattern), target))
    return tuple(rules)


_TO_DIFFUSERS = _prefix_rules(KEY_PREFIXES)
_TO_LDM = _prefix_rules(tuple((d, v) for v, d in KEY_PREFIXES))


def _rename(key: str, levels: int, rules: tuple[tuple[re.Pattern[str], str], ...], infixes) -> str:
    for pattern, target in rules:
        m = pattern.match(key)
        if m is None:
            continue
        fields = m.groupdict()
        if "i" in fields and "u" not in fields:
            fields["u"] = levels - 1 - int(fields["i"])
        elif "u" in fields and "i" not in fields:
            fields["i"] = levels - 1 - int(fields["u"])
        if int(fields.get("i", 0)) < 0 or int(fields.get("u", 0)) < 0:
            raise ValueError(f"{key!r}: level out of range for a model of {levels} levels")
        key = target.format(**fields) + key[m.end() :]
        break
    for old, new in infixes:
        key = key.replace(old, new)
    return key


def ldm_to_diffusers_key(key: str, levels: int) -> str:
    """The diffusers name of a vivat / LDM parameter (``levels``: number of resolutions), by
    :data:`KEY_PREFIXES` and :data:`KEY_INFIXES`."""
    return _rename(key, levels, _TO_DIFFUSERS, KEY_INFIXES)


def diffusers_to_ldm_key(key: str, levels: int) -> str:
    """Inverse of :func:`ldm_to_diffusers_key` (the same tables read backwards); also reads the old
    ``query/key/value/proj_attn`` attention names (:data:`DIFFUSERS_ALIASES`)."""
    for old, new in DIFFUSERS_ALIASES:
        key = key.replace(old, new)
    return _rename(key, levels, _TO_LDM, tuple((d, v) for v, d in KEY_INFIXES))


def diffusers_to_ldm_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict in diffusers naming renamed to vivat / LDM naming (the tensors are not copied)."""
    levels = _levels(list(state), r"^decoder\.up_blocks\.(\d+)\.")
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        new = diffusers_to_ldm_key(k, levels)
        if new in out:
            raise WeightsError(f"two diffusers keys map to {new!r} (old and new attention names together?)")
        out[new] = v
    return out


def _is_diffusers_naming(keys: list[str]) -> bool:
    return any(".down_blocks." in k or ".mid_block." in k or ".up_blocks." in k for k in keys)


# -------------------------------------------------------------------------------------------
# Config inference and building the model
# -------------------------------------------------------------------------------------------
def infer_config(state: Mapping[str, Tensor], norm_groups: int = 32) -> VAEConfig:
    """The architecture an LDM-named state dict describes (plain zero padding; see module doc)."""
    keys = list(state)
    needed = [
        "encoder.conv_in.weight",
        "decoder.conv_in.weight",
        "decoder.conv_out.weight",
        "encoder.down.0.block.0.conv1.weight",
    ]
    missing = [k for k in needed if k not in state]
    if missing:
        raise ValueError(f"not a KL-VAE state dict in LDM naming: missing {missing}")
    ch, in_channels = state["encoder.conv_in.weight"].shape[:2]
    levels = _levels(keys, r"^encoder\.down\.(\d+)\.")
    widths = [state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)]
    if any(w % ch for w in widths):
        raise ValueError(f"level widths {widths} are not multiples of the base width {ch}")
    return VAEConfig(
        in_channels=int(in_channels),
        out_channels=int(state["decoder.conv_out.weight"].shape[0]),
        ch=int(ch),
        ch_mult=tuple(w // ch for w in widths),
        num_res_blocks=_levels(keys, r"^encoder\.down\.0\.block\.(\d+)\."),
        z_channels=int(state["decoder.conv_in.weight"].shape[1]),
        mid_attn=any(k.startswith("encoder.mid.attn_1.") for k in keys),
        norm_groups=norm_groups,
        padding_mode="zeros",
        scn="decoder.norm_out.conv_y.weight" in state,
        scn_kernel=int(state["decoder.norm_out.conv_y.weight"].shape[-1])
        if "decoder.norm_out.conv_y.weight" in state
        else 1,
    )


def _with_factors(config: VAEConfig, family: str | None) -> VAEConfig:
    if family is None:
        return config
    if family not in LATENT_FACTORS:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(LATENT_FACTORS)}")
    scale, shift = LATENT_FACTORS[family]
    return config.replace(scaling_factor=scale, shift_factor=shift)


def _build(config: VAEConfig, state: Mapping[str, Tensor], source: str, notes: list[str]) -> AutoencoderKL:
    """A vivat model with exactly ``state`` (LDM naming) loaded; every key and shape checked."""
    with torch.device("meta"):
        model = AutoencoderKL(config)
    expected = model.state_dict()
    state = dict(state)
    for name in ("quant_conv", "post_quant_conv"):
        if f"{name}.weight" not in state and f"{name}.bias" not in state:
            c = expected[f"{name}.weight"].shape[0]
            state[f"{name}.weight"] = torch.eye(c).view(c, c, 1, 1)
            state[f"{name}.bias"] = torch.zeros(c)
            notes.append(f"no {name} in the weights (FLUX / SD3 style): set to the exact identity")
    for k in list(state):
        if _ATTN_WEIGHT.search(k) and state[k].dim() == 2:  # Linear (C, C) -> 1x1 conv (C, C, 1, 1)
            state[k] = state[k][:, :, None, None]
    check_state_dict(expected, state, source=source)
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in state.values()})
    if dtypes != ["float32"]:
        notes.append(f"weights stored as {', '.join(dtypes)}; loaded into a float32 model")
    model.to_empty(device="cpu")
    model.load_state_dict(state, strict=True)
    return model.eval()


# -------------------------------------------------------------------------------------------
# Import
# -------------------------------------------------------------------------------------------
def _ldm_vae_part(state: dict[str, Tensor], notes: list[str]) -> tuple[dict[str, Tensor], str | None]:
    """The VAE's tensors of an LDM / FLUX file, prefixes stripped, and the family it hints at."""
    family = next((fam for prefix, fam in _FAMILY_HINTS if any(k.startswith(prefix) for k in state)), None)
    for prefix in _PIPELINE_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            vae = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if len(vae) < len(state):
                notes.append(
                    f"took the {len(vae)} '{prefix}*' tensors of a pipeline checkpoint; "
                    f"left out {len(state) - len(vae)} others (diffusion model, text encoders...)"
                )
            return vae, family
    loss = [k for k in state if k.startswith("loss.")]
    if loss:
        notes.append(f"left out {len(loss)} 'loss.*' tensors (LPIPS and discriminator of the training checkpoint)")
    return {k: v for k, v in state.items() if not k.startswith("loss.")}, family


def _from_ldm(source, config, family, notes) -> AutoencoderKL:
    state, where = _as_state_dict(source)
    state, hinted = _ldm_vae_part(state, notes)
    if _is_diffusers_naming(list(state)):
        raise ValueError(f"{where} uses diffusers naming; use from_diffusers")
    if config is None:
        config = infer_config(state)
        if family is None and hinted is not None:
            family = hinted
            notes.append(f"latent factors of '{family}' (guessed from the checkpoint's other keys)")
        elif family is None:
            notes.append("latent family unknown: scaling_factor 1.0, shift_factor 0.0 (pass family=...)")
    return _build(_with_factors(config, family), state, where, notes)


def from_ldm(
    source: str | os.PathLike | Mapping[str, Tensor],
    config: VAEConfig | None = None,
    *,
    family: str | None = None,
    notes: list[str] | None = None,
) -> AutoencoderKL:
    """A vivat model from LDM / CompVis / FLUX weights (a file or a state dict).

    Reads ``.ckpt`` / ``.pt`` / ``.safetensors`` with or without the ``first_stage_model.`` or
    ``vae.`` prefix of a pipeline checkpoint. ``config`` (architecture, padding, SCN) is inferred
    from the weights when not given; ``family`` (``"sd"``, ``"sdxl"``, ``"sd3"``, ``"flux"``) sets
    the latent factors, which are otherwise guessed from a pipeline checkpoint or left at 1.0 / 0.0.
    ``notes``, when given, receives one line per thing the conversion decided or left out.
    """
    return _from_ldm(source, config, family, [] if notes is None else notes)


def _diffusers_folder(path: Path) -> Path:
    if (path / DIFFUSERS_CONFIG).is_file():
        return path
    if (path / "vae" / DIFFUSERS_CONFIG).is_file():  # a pipeline folder
        return path / "vae"
    raise FileNotFoundError(f"{path} has no {DIFFUSERS_CONFIG} (nor vae/{DIFFUSERS_CONFIG})")


def _diffusers_weights(folder: Path) -> Path:
    for name in (DIFFUSERS_WEIGHTS, "diffusion_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder} has no {DIFFUSERS_WEIGHTS}")


def config_from_diffusers(d: Mapping[str, Any], scn: bool = False) -> VAEConfig:
    """A :class:`VAEConfig` from a diffusers ``AutoencoderKL`` config (a dict or FrozenDict).

    A config written by :func:`to_diffusers` carries the full vivat config (``_vivat``), which wins.
    """
    if d.get(VIVAT_CONFIG_KEY):
        return VAEConfig.from_dict(d[VIVAT_CONFIG_KEY])
    widths = [int(w) for w in d.get("block_out_channels", (64,))]
    problems = []
    if any(t != "DownEncoderBlock2D" for t in d.get("down_block_types", ["DownEncoderBlock2D"])):
        problems.append(f"down_block_types {d['down_block_types']}")
    if any(t != "UpDecoderBlock2D" for t in d.get("up_block_types", ["UpDecoderBlock2D"])):
        problems.append(f"up_block_types {d['up_block_types']}")
    if d.get("act_fn", "silu") not in ("silu", "swish"):
        problems.append(f"act_fn {d['act_fn']!r}")
    if any(w % widths[0] for w in widths):
        problems.append(f"block_out_channels {widths} are not multiples of the first")
    if problems:
        raise ValueError("not a KL-VAE vivat can represent: " + "; ".join(problems))
    shift = d.get("shift_factor")
    return VAEConfig(
        in_channels=int(d.get("in_channels", 3)),
        out_channels=int(d.get("out_channels", 3)),
        ch=widths[0],
        ch_mult=tuple(w // widths[0] for w in widths),
        num_res_blocks=int(d.get("layers_per_block", 1)),
        z_channels=int(d.get("latent_channels", 4)),
        mid_attn=bool(d.get("mid_block_add_attention", True)),
        norm_groups=int(d.get("norm_num_groups", 32)),
        padding_mode="zeros",
        scn=scn,
        scaling_factor=float(d.get("scaling_factor", 0.18215)),
        shift_factor=0.0 if shift is None else float(shift),
    )


def _from_diffusers(source, config, family, notes) -> AutoencoderKL:
    dconfig: Mapping[str, Any] | None = None
    if isinstance(source, AutoencoderKL):
        raise TypeError("this is already a vivat AutoencoderKL")
    if isinstance(source, nn.Module):
        if type(source).__name__ != "AutoencoderKL":
            raise ValueError(f"expected a diffusers AutoencoderKL, got {type(source).__name__}")
        state, where, dconfig = dict(source.state_dict()), "diffusers AutoencoderKL", dict(source.config)
    elif isinstance(source, Mapping):
        state, where = dict(source), "state dict"
    elif Path(source).is_dir():
        folder = _diffusers_folder(Path(source))
        try:
            dconfig = json.loads((folder / DIFFUSERS_CONFIG).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{folder / DIFFUSERS_CONFIG} is not valid JSON ({exc})") from None
        if not isinstance(dconfig, dict):
            raise ConfigError(f"{folder / DIFFUSERS_CONFIG} holds a JSON {type(dconfig).__name__}, not an object")
        weights = _diffusers_weights(folder)
        state, where = read_state_dict(weights), str(weights)
    else:
        state, where = read_state_dict(source), str(source)
    state = {k: v.detach() for k, v in state.items()}
    ldm = diffusers_to_ldm_state(state) if _is_diffusers_naming(list(state)) else state
    if config is None:
        scn = "decoder.norm_out.conv_y.weight" in ldm
        config = config_from_diffusers(dconfig, scn=scn) if dconfig is not None else infer_config(ldm)
        if dconfig is None and family is None:
            notes.append("no diffusers config: scaling_factor 1.0, shift_factor 0.0 (pass family=...)")
        for name in ("latents_mean", "latents_std"):
            if dconfig is not None and dconfig.get(name) is not None:
                notes.append(f"the diffusers config's {name} is not kept (vivat has one scale and one shift)")
    return _build(_with_factors(config, family), ldm, where, notes)


def from_diffusers(
    source: nn.Module | str | os.PathLike | Mapping[str, Tensor],
    config: VAEConfig | None = None,
    *,
    family: str | None = None,
    notes: list[str] | None = None,
) -> AutoencoderKL:
    """A vivat model from a diffusers ``AutoencoderKL``: the model itself, a folder
    (``config.json`` + ``diffusion_pytorch_model.safetensors``, or a pipeline folder with ``vae/``),
    a weights file, or a state dict. The config comes from ``config``, else the diffusers config
    (factors included), else the weights; ``family`` overrides the latent factors.
    """
    return _from_diffusers(source, config, family, [] if notes is None else notes)


def _load(source, config, family, notes) -> AutoencoderKL:
    if isinstance(source, nn.Module) and not isinstance(source, AutoencoderKL):
        return _from_diffusers(source, config, family, notes)
    if not isinstance(source, (AutoencoderKL, Mapping)):
        path = Path(source)
        if path.is_dir() and (path / "model.safetensors").is_file() and (path / DIFFUSERS_CONFIG).is_file():
            notes.append("a vivat model folder")
            source = AutoencoderKL.from_pretrained(path)
    if isinstance(source, AutoencoderKL):
        if config is not None and config != source.config:
            raise ValueError("a vivat model carries its own config; --config / config= does not apply")
        return _build(_with_factors(source.config, family), source.state_dict(), "vivat model", notes)
    if not isinstance(source, Mapping):
        path = Path(source)
        if path.is_dir():
            return _from_diffusers(path, config, family, notes)
        source = read_state_dict(path)
    prefixed = any(k.startswith(_PIPELINE_PREFIXES) for k in source)
    if not prefixed and _is_diffusers_naming(list(source)):
        return _from_diffusers(source, config, family, notes)
    return _from_ldm(source, config, family, notes)


def load(
    source: nn.Module | str | os.PathLike | Mapping[str, Tensor],
    config: VAEConfig | None = None,
    *,
    family: str | None = None,
    notes: list[str] | None = None,
) -> AutoencoderKL:
    """Any of the above, told apart by what it is: a vivat folder, a diffusers folder or model, or
    LDM / FLUX / diffusers weights (file or state dict, naming detected from the keys). ``notes``,
    when given, receives one line per thing the conversion decided or left out."""
    return _load(source, config, family, [] if notes is None else notes)


# -------------------------------------------------------------------------------------------
# Export
# -------------------------------------------------------------------------------------------
def _is_identity_conv(conv: nn.Conv2d) -> bool:
    w = conv.weight.detach()
    c = w.shape[0]
    return (
        w.shape == (c, c, 1, 1)
        and torch.equal(w.view(c, c), torch.eye(c, dtype=w.dtype, device=w.device))
        and conv.bias is not None
        and not conv.bias.detach().any()
    )


def diffusers_config(model: AutoencoderKL) -> dict[str, Any]:
    """The diffusers ``AutoencoderKL`` config of ``model`` (plus the vivat config under ``_vivat``)."""
    try:
        diffusers_version = importlib.metadata.version("diffusers")
    except importlib.metadata.PackageNotFoundError:  # diffusers is optional; the format is stable
        diffusers_version = "0.30.0"
    cfg = model.config
    levels = len(cfg.ch_mult)
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": diffusers_version,
        "act_fn": "silu",
        "block_out_channels": [cfg.ch * m for m in cfg.ch_mult],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "force_upcast": True,
        "in_channels": cfg.in_channels,
        "latent_channels": cfg.z_channels,
        "latents_mean": None,
        "latents_std": None,
        "layers_per_block": cfg.num_res_blocks,
        "mid_block_add_attention": cfg.mid_attn,
        "norm_num_groups": cfg.norm_groups,
        "out_channels": cfg.out_channels,
        "sample_size": 512,
        "scaling_factor": cfg.scaling_factor,
        "shift_factor": cfg.shift_factor or None,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "use_post_quant_conv": not _is_identity_conv(model.post_quant_conv),
        "use_quant_conv": not _is_identity_conv(model.quant_conv),
        VIVAT_CONFIG_KEY: cfg.to_dict(),
    }


def diffusers_state_dict(model: AutoencoderKL) -> dict[str, Tensor]:
    """``model``'s weights in diffusers naming (attention weights as Linear (C, C))."""
    config = diffusers_config(model)
    levels = len(model.config.ch_mult)
    out: dict[str, Tensor] = {}
    for k, v in model.state_dict().items():
        name = k.split(".", 1)[0]
        if name in ("quant_conv", "post_quant_conv") and not config[f"use_{name}"]:
            continue
        v = v.detach().to("cpu")
        if _ATTN_WEIGHT.search(k):
            v = v.flatten(1)
        out[ldm_to_diffusers_key(k, levels)] = v.contiguous()
    return out


def to_diffusers(model: AutoencoderKL, directory: str | os.PathLike) -> Path:
    """Write ``model`` as a diffusers ``AutoencoderKL`` folder (``config.json`` +
    ``diffusion_pytorch_model.safetensors``); returns the folder.

    Without SCN, ``diffusers.AutoencoderKL.from_pretrained(directory)`` loads it. Reflect padding is
    not a diffusers option: after loading, ``vivat_kernels.patch(vae, reflect_padding=True)`` gives
    the same outputs as ``model``. With SCN, diffusers' AutoencoderKL cannot load it (its decoder
    has no spatial norms): the folder is still written (in the names of diffusers' spatial-norm
    decoder) so that :func:`from_diffusers` reads it back, and a warning says so.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    if cfg.scn:
        warnings.warn(
            "this model has SCN decoder norms: diffusers' AutoencoderKL cannot load the exported folder "
            "(vivat.convert.from_diffusers can)",
            UserWarning,
            stacklevel=2,
        )
    elif cfg.padding_mode == "reflect":
        warnings.warn(
            "this model uses reflect padding, which diffusers' AutoencoderKL does not: after "
            "AutoencoderKL.from_pretrained, call vivat_kernels.patch(vae, reflect_padding=True) to get "
            "the same outputs",
            UserWarning,
            stacklevel=2,
        )
    write_safetensors(diffusers_state_dict(model), out / DIFFUSERS_WEIGHTS, metadata={"format": "pt"})
    tmp = out / (DIFFUSERS_CONFIG + ".tmp")
    tmp.write_text(json.dumps(diffusers_config(model), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / DIFFUSERS_CONFIG)
    return out


# -------------------------------------------------------------------------------------------
# VIVAT-ize a pretrained VAE
# -------------------------------------------------------------------------------------------
ARCHITECTURE_FIELDS = ("ch", "ch_mult", "num_res_blocks", "mid_attn", "norm_groups")


def vivat_recipe_preset(config: VAEConfig) -> str:
    """The VIVAT preset whose loss recipe suits a model of ``config``'s scale.

    The VIVAT preset of the same architecture (:data:`ARCHITECTURE_FIELDS`; ``z_channels`` and the
    fixes may differ, so ``ldm-tiny`` maps to ``vivat-tiny`` and ``ldm-f8c4`` or SD's VAE to
    ``vivat-f8c16``); failing that, the one whose base width ``ch`` is nearest (the larger on a tie).
    """
    vivat = {name: p for name, p in PRESETS.items() if p.scn and p.padding_mode == "reflect"}
    for name, preset in vivat.items():
        if all(getattr(preset, f) == getattr(config, f) for f in ARCHITECTURE_FIELDS):
            return name
    return min(vivat, key=lambda name: (abs(vivat[name].ch - config.ch), -vivat[name].ch))


def vivatize(model: AutoencoderKL, *, scn: bool = True, reflect: bool = True) -> AutoencoderKL:
    """The VIVAT variant of ``model``: SCN in every decoder norm and/or reflect padding.

    Weights are copied; each new SCN norm starts as the identity (``conv_y`` weight 0 / bias 1,
    ``conv_b`` 0 / 0), so with zero padding the result decodes exactly like ``model``; reflect
    padding changes the border pixels a little (see :func:`conversion_psnr`). The loss recipe
    becomes that of the VIVAT preset of the model's scale (:func:`vivat_recipe_preset`: the tiny
    schedule for a tiny model, the full one otherwise), ready for ``vivat train --init DIR
    --decoder-only``.
    """
    old = model.config
    config = old.replace(
        scn=old.scn or scn,
        padding_mode="reflect" if reflect else old.padding_mode,
        loss=PRESETS[vivat_recipe_preset(old)].loss,
    )
    source = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    with torch.device("meta"):
        expected = AutoencoderKL(config).state_dict()
    state: dict[str, Tensor] = {}
    for k, meta in expected.items():
        if k in source:
            state[k] = source[k]
        elif (m := re.match(r"(.*)\.norm_layer\.(weight|bias)$", k)) and f"{m[1]}.{m[2]}" in source:
            state[k] = source[f"{m[1]}.{m[2]}"]
        elif re.search(r"\.conv_y\.bias$", k):
            state[k] = torch.ones(meta.shape)
        elif re.search(r"\.conv_[yb]\.(weight|bias)$", k):
            state[k] = torch.zeros(meta.shape)
    return _build(config, state, "vivatize", [])


def conversion_psnr(original: AutoencoderKL, converted: AutoencoderKL, images: Tensor) -> dict[str, float]:
    """How closely ``converted`` reproduces ``original`` on ``images`` ((N, 3, H, W) in [-1, 1]).

    ``decode_psnr_db``: both decoders on the original's latent (the decoder-only view);
    ``reconstruction_psnr_db``: each model end to end (reflect padding also moves the encoder's
    latents at the borders: ``latent_max_abs_diff``). PSNR on [0, 1] outputs, 100 dB = identical.
    """
    from .metrics import psnr

    def to01(t: Tensor) -> Tensor:
        return ((t.float() + 1) / 2).clamp(0, 1)

    original, converted = original.eval(), converted.eval()
    with torch.no_grad():
        z = original.encode(images).mode()
        dec_a = to01(original.decode(z))
        dec_b = to01(converted.decode(z))
        z_b = converted.encode(images).mode()
        rec_b = to01(converted.decode(z_b))
    return {
        "decode_psnr_db": float(psnr(dec_a, dec_b).mean()),
        "reconstruction_psnr_db": float(psnr(dec_a, rec_b).mean()),
        "latent_max_abs_diff": float((z - z_b).abs().max()),
    }


__all__ = [
    "ARCHITECTURE_FIELDS",
    "DIFFUSERS_ALIASES",
    "KEY_INFIXES",
    "KEY_PREFIXES",
    "LATENT_FACTORS",
    "config_from_diffusers",
    "conversion_psnr",
    "diffusers_config",
    "diffusers_state_dict",
    "diffusers_to_ldm_key",
    "diffusers_to_ldm_state",
    "from_diffusers",
    "from_ldm",
    "infer_config",
    "ldm_to_diffusers_key",
    "load",
    "read_state_dict",
    "to_diffusers",
    "vivat_recipe_preset",
    "vivatize",
]
