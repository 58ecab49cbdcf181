"""Training losses of the KL-VAE and the PatchGAN discriminator (LDM's LPIPSWithDiscriminator, re-scaled).

Generator (autoencoder) loss, one call per step::

    L_G_total = l1 * L1 + p * LPIPS + kl * KL + adv * w * L_G        (L_G = -mean D(x_hat))

Discriminator loss, a second, separate call::

    L_D = 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))     (hinge)

Reduction (the scale every weight in :mod:`vivat.config` is expressed in)
------------------------------------------------------------------------
* ``L1``    = mean of ``|x - x_hat|`` over batch, channels and pixels.
* ``LPIPS`` = the ``lpips`` package's per-image value (already a spatial mean), mean over batch.
* ``KL``    = per-sample KL(q(z|x) || N(0, I)) *summed* over latent elements, mean over batch,
  divided by ``N = C * H * W`` of the image: the latent's KL "per image element", on the same
  scale as the mean L1.
* ``w``     = ``||grad_last(l1*L1 + p*LPIPS)|| / (||grad_last L_G|| + 1e-4)``, clamped to
  ``[0, adaptive_weight_max]`` and detached; ``grad_last`` is at the decoder's last conv weight.
  ``w = 0`` (and D is not run) before ``disc_start``.

From LDM's summed scale
-----------------------
LDM (``LPIPSWithDiscriminator``, its learned output log-variance at its initial value 0, which we
omit) minimises per batch of B images of N = C*H*W elements::

    L_LDM = 1/B sum_b sum_pixels (|x - x_hat| + p * LPIPS_b) + k * 1/B sum_b KL_b + d * w_LDM * L_G
    w_LDM = ||grad sum-scale rec|| / (||grad L_G|| + 1e-4), clamped to [0, 1e4]

Divide by the constant N: the first term becomes our mean ``L1 + p*LPIPS`` (LPIPS is broadcast to
every pixel before LDM's sum, so p is unchanged), the second ``k * KL`` with KL as defined above
(so k is unchanged), and ``w_LDM / N`` is exactly our ``w`` because its numerator is the gradient of
the summed reconstruction, so d is unchanged too. Hence ``L_ours = L_LDM / N`` and LDM's
``kl_weight = 1e-6``, ``perceptual_weight = 1.0``, ``disc_weight = 0.5`` carry over verbatim; only
the clamp changes unit: ``1e4 / N = 1e4 / (3 * 256 * 256) ~= 0.0509`` at LDM's 256-px crops (a
resolution-dependent cap in LDM; a fixed number here). Adam is invariant to a constant factor on
the loss (up to its eps), so LDM's learning rates carry over as well.

LPIPS
-----
The perceptual term uses ``lpips`` with the VGG16 trunk: torchvision's ``vgg16-397923af.pth`` from
``torch.hub.get_dir()/checkpoints`` (i.e. ``$TORCH_HOME/hub/checkpoints``) and the linear heads
shipped inside the ``lpips`` package. A trunk that is not cached is downloaded once from
torchvision's URL into that cache and hash-checked (:func:`vivat.metrics.fetch_lpips_weights`),
unless downloads are off (``VIVAT_NO_DOWNLOAD=1``, ``--no-download``). If the weights still cannot
be had (offline, a failed hash), one warning says so and the run continues with the perceptual
weight set to 0 (``require_lpips=True`` raises instead). A randomly initialised trunk is never used.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LossConfig
from .metrics import load_lpips, lpips_status
from .model import DiagonalGaussianDistribution


# -------------------------------------------------------------------------------------------
# LPIPS (VGG): cached files, fetched once when missing and allowed
# -------------------------------------------------------------------------------------------
def load_lpips_vgg() -> nn.Module:
    """LPIPS(vgg) with its ImageNet trunk and linear heads, frozen, in eval.

    The fetching (see :func:`vivat.metrics.lpips_status`), loading and hash check of the trunk are
    :func:`vivat.metrics.load_lpips`'s. Raises
    FileNotFoundError, its message starting "LPIPS disabled:", when a file is missing or unfit.
    """
    ok, reason = lpips_status("vgg")
    if not ok:
        raise FileNotFoundError(f"LPIPS disabled: {reason}")
    try:
        return load_lpips("vgg", require=True)
    except RuntimeError as err:  # a file that is there but cannot be loaded
        raise FileNotFoundError(f"LPIPS disabled: {err}") from err


# -------------------------------------------------------------------------------------------
# Discriminator
# -------------------------------------------------------------------------------------------
class NLayerDiscriminator(nn.Module):
    """PatchGAN of pix2pix / LDM: 4x4 convs, ``n_layers`` stride-2 stages, one logit per patch.

    ``norm="group"`` (default) uses GroupNorm where LDM uses BatchNorm: LDM calls D on a batch of
    real images and a batch of fakes separately, so BatchNorm statistics differ between the two
    calls and between train and eval, and under DDP they are per-rank unless converted to
    SyncBatchNorm. GroupNorm is per-sample and free of those couplings. ``norm="batch"`` is LDM's.
    Initialisation as LDM: conv weights N(0, 0.02), norm weights N(1, 0.02), norm biases 0.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3, norm: str = "group"):
        super().__init__()

        def norm_layer(c: int) -> nn.Module:
            return nn.GroupNorm(math.gcd(32, c), c) if norm == "group" else nn.BatchNorm2d(c)

        if norm not in ("group", "batch"):
            raise ValueError(f"norm must be 'group' or 'batch', got {norm!r}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(channels * prev, channels * mult, 4, stride=stride, padding=1, bias=False),
                norm_layer(channels * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(channels * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """0.5 * (mean relu(1 - real) + mean relu(1 + fake))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Temporarily stop gradients into ``module``'s parameters (restoring each flag after)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


# -------------------------------------------------------------------------------------------
# The loss module
# -------------------------------------------------------------------------------------------
class VAELoss(nn.Module):
    """Owns the discriminator and the frozen LPIPS net; two calls per step:

    ``generator_loss(...)`` for the autoencoder's optimiser, ``discriminator_loss(...)`` for the
    discriminator's. Checkpoint ``self.discriminator`` (LPIPS is a fixed, loaded net).
    ``self.perceptual_weight`` is the weight in effect (0 when LPIPS is disabled).
    """

    def __init__(self, cfg: LossConfig, *, in_channels: int = 3, require_lpips: bool = False):
        super().__init__()
        self.cfg = cfg
        self.discriminator = NLayerDiscriminator(in_channels, cfg.disc_channels, cfg.disc_layers, cfg.disc_norm)
        self.lpips: nn.Module | None = None
        self.perceptual_weight = float(cfg.perceptual_weight)
        self.lpips_status = "not used (perceptual_weight = 0)"
        if self.perceptual_weight > 0:
            try:
                self.lpips = load_lpips_vgg()
                self.lpips_status = "vgg, pretrained"
            except FileNotFoundError as err:
                if require_lpips:
                    raise
                self.lpips_status = str(err)
                self.perceptual_weight = 0.0
                warnings.warn(
                    f"{err}; training continues without the perceptual term (perceptual weight 0). "
                    "Place the file there (or allow downloads), or require LPIPS to make this an error.",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def train(self, mode: bool = True) -> VAELoss:
        super().train(mode)
        if self.lpips is not None:
            self.lpips.eval()  # its dropout layers must stay off: LPIPS is a fixed metric
        return self

    def disc_active(self, step: int) -> bool:
        """Whether the adversarial terms are on at ``step`` (``step >= disc_start`` and adv > 0)."""
        return step >= self.cfg.disc_start and self.cfg.adv_weight > 0

    def adaptive_weight(self, rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor) -> Tensor:
        """LDM's gradient-balancing weight at ``last_layer``, clamped to [0, cap] and detached."""
        (rec_grad,) = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
        (g_grad,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
        w = rec_grad.norm() / (g_grad.norm() + 1e-4)
        return w.clamp(0.0, self.cfg.adaptive_weight_max).detach()

    def generator_loss(
        self,
        x: Tensor,
        x_hat: Tensor,
        posterior: DiagonalGaussianDistribution,
        step: int,
        last_layer: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Autoencoder loss and detached log values. ``last_layer``: ``model.last_layer()``, needed
        once the discriminator is active (without autograd, e.g. validation, ``w`` is 0)."""
        cfg = self.cfg
        l1 = (x - x_hat).abs().mean()
        p_loss = (
            self.lpips(x, x_hat).mean() if self.lpips is not None and self.perceptual_weight > 0 else l1.new_zeros(())
        )
        rec = cfg.l1_weight * l1 + self.perceptual_weight * p_loss
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec + cfg.kl_weight * kl

        g_loss, w = l1.new_zeros(()), l1.new_zeros(())
        if self.disc_active(step):
            with frozen(self.discriminator):
                g_loss = -self.discriminator(x_hat).mean()
            if torch.is_grad_enabled():
                if last_layer is None:
                    raise ValueError("last_layer (model.last_layer()) is required once the discriminator is active")
                w = self.adaptive_weight(rec, g_loss, last_layer)
            loss = loss + cfg.adv_weight * w * g_loss

        logs = {
            "loss": loss,
            "l1": l1,
            "lpips": p_loss,
            "rec": rec,
            "kl": kl,
            "g_loss": g_loss,
            "adaptive_weight": w,
        }
        return loss, {k: v.detach() for k, v in logs.items()}

    def discriminator_loss(self, x: Tensor, x_hat: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Hinge loss of D on real ``x`` and detached ``x_hat``. Before ``disc_start`` it is a zero
        that backpropagates to nothing (D is not run), so a loop may call it unconditionally."""
        if not self.disc_active(step):
            zero = torch.zeros((), device=x.device, dtype=x.dtype, requires_grad=True)
            return zero, {"d_loss": zero.detach(), "logits_real": zero.detach(), "logits_fake": zero.detach()}
        logits_real = self.discriminator(x.detach())
        logits_fake = self.discriminator(x_hat.detach())
        loss = hinge_d_loss(logits_real, logits_fake)
        logs = {"d_loss": loss, "logits_real": logits_real.mean(), "logits_fake": logits_fake.mean()}
        return loss, {k: v.detach() for k, v in logs.items()}
