"""Diffusion training losses: the standard classifier-free loss and the CFG-aligned loss (spec cfg-loss.md).

Notation: x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε, the network predicts ε; c̃ is the label after dropout (∅ with
probability p_uncond); guidance in the paper's convention ε̃ = (1 + w)·ε(x_t, c) − w·ε(x_t, ∅). Squared norms are
averaged over every element (ADM's ``mean_flat`` then the batch mean), so the losses are per-dimension MSEs.

Both losses see the same draws (t, ε, dropout mask) from the same generator, in the same order; a training run with
one or the other differs in the loss line only.
"""

from __future__ import annotations


import torch
from torch import Tensor

from ..adapter import Network
from ..guidance.cfg import guided_eps
from ..schedule import NoiseSchedule, noised_batch
from .config import LossConfig

__all__ = [
    "drop_labels", "guided_eps", "standard_cfg_loss", "aligned_cfg_loss", "aligned_optimum", "effective_guidance",
    "draw_w_train", "noised_batch", "cfg_training_loss", "diffusion_training_loss",
]


def drop_labels(labels: Tensor, p_uncond: float, null_label: int, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:
    """c̃ = ∅ (``null_label``) with probability p_uncond, else c, independently per sample; returns (c̃, dropped mask).

    One uniform draw per sample from ``generator`` whatever p_uncond is (so the stream that follows is the same).
    """
    if isinstance(p_uncond, bool) or not isinstance(p_uncond, (int, float)) or not 0 <= p_uncond <= 1:
        raise ValueError(f"p_uncond: expected a probability in [0, 1], got {p_uncond!r}")
    u = torch.rand(labels.shape, generator=generator, device=generator.device if generator else labels.device)
    dropped = u.to(labels.device) < p_uncond
    return torch.where(dropped, torch.full_like(labels, null_label), labels), dropped


def standard_cfg_loss(eps_pred: Tensor, noise: Tensor) -> Tensor:
    """L_std = E ‖ε − ε_θ(x_t, c̃)‖²  (c̃: the label after dropout; ``eps_pred`` = ε_θ(x_t, c̃))."""
    return ((noise - eps_pred.float()) ** 2).mean()


def aligned_cfg_loss(eps_cond: Tensor, eps_null: Tensor, noise: Tensor, w_train: float | Tensor,
                     dropped: Tensor | None = None, *, stop_grad_null: bool = False) -> Tensor:
    """L_ours = E ‖ ε − [ (1 + w_train)·ε_θ(x_t, c̃) − w_train·ε_θ(x_t, ∅) ] ‖².

    ``eps_cond`` = ε_θ(x_t, c̃), ``eps_null`` = ε_θ(x_t, ∅) (the two halves of one forward of [x_t, x_t] with labels
    [c̃, ∅]). On dropped samples (``dropped`` True: c̃ = ∅) the bracket is ε_θ(x_t, ∅) itself — exactly the standard
    loss, with its gradient. ``stop_grad_null``: ε_θ(x_t, ∅) inside the guided term is treated as a constant (the null
    label then learns from the dropped samples only). ``w_train``: a number, or a tensor broadcastable against ε.
    """
    if not torch.is_tensor(w_train) and (isinstance(w_train, bool) or not isinstance(w_train, (int, float))
                                         or not w_train >= 0):
        raise ValueError(f"w_train: expected a number ≥ 0, got {w_train!r}")
    eps_cond, eps_null = eps_cond.float(), eps_null.float()
    guided = guided_eps(eps_cond, eps_null.detach() if stop_grad_null else eps_null, w_train)
    if dropped is not None:
        guided = torch.where(dropped.reshape(-1, *([1] * (guided.ndim - 1))), eps_cond, guided)
    return ((noise - guided) ** 2).mean()


def aligned_optimum(eps_cond: Tensor, eps_uncond: Tensor, w_train: float) -> Tensor:
    """The ideal conditional branch of the aligned loss: ε*(x_t, c) = (E[ε|x_t,c] + w_train·E[ε|x_t]) / (1 + w_train).

    (The null branch's optimum is E[ε|x_t], as for the standard loss.)"""
    return (eps_cond + w_train * eps_uncond) / (1 + w_train)


def effective_guidance(w_sample: float, w_train: float) -> float:
    """w_eff = (w' − w_train)/(1 + w_train): sampling the aligned optimum at w' is standard CFG with the true ε at
    w_eff (w' = w_train samples the plain conditional)."""
    return (w_sample - w_train) / (1 + w_train)


def draw_w_train(config: LossConfig, generator: torch.Generator | None = None) -> float | Tensor:
    """w_train of this batch: the fixed ``config.w_train`` (a float), or one draw from U[w_min, w_max]
    (``config.w_range``; a 0-dim tensor on the generator's device, so no device synchronisation)."""
    if config.w_range is None:
        return float(config.w_train)
    low, high = config.w_range
    device = generator.device if generator is not None else "cpu"
    return low + (high - low) * torch.rand((), generator=generator, device=device)


def cfg_training_loss(net: Network, x_t: Tensor, t: Tensor, noise: Tensor, labels: Tensor | None,
                      config: LossConfig, null_label: int | None, generator: torch.Generator | None = None
                      ) -> tuple[Tensor, dict]:
    """The loss of one batch, as ``config`` says, and a dict of detached statistics (0-dim tensors or floats).

    - unconditional (``labels`` None): L_std with ε_θ(x_t) (``net(x_t, t, None)``);
    - ``standard``: c̃ from :func:`drop_labels`, one forward of [x_t] with c̃, L_std;
    - ``aligned``: c̃ as above, w_train from :func:`draw_w_train`, ONE forward of [x_t, x_t] with [c̃, ∅];
      L_ours (``mix_lambda`` None) or L_std + λ·L_ours.
    """
    if labels is None:
        if config.kind == "aligned":
            raise ValueError("labels: the aligned CFG loss needs class labels")
        loss = standard_cfg_loss(net(x_t, t, None), noise)
        return loss, {"loss": loss.detach()}
    if null_label is None:
        raise ValueError("null_label: a class-conditional loss needs the null label index (num_classes)")
    conditioned, dropped = drop_labels(labels, config.p_uncond, null_label, generator)
    if config.kind == "standard":
        loss = standard_cfg_loss(net(x_t, t, conditioned), noise)
        return loss, {"loss": loss.detach()}
    w = draw_w_train(config, generator)
    out = net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([conditioned, torch.full_like(labels, null_label)]))
    eps_cond, eps_null = out.chunk(2)
    aligned = aligned_cfg_loss(eps_cond, eps_null, noise, w, dropped, stop_grad_null=config.stop_grad_null)
    stats = {"loss_aligned": aligned.detach(), "w_train": w}
    if config.mix_lambda is None:
        loss = aligned
    else:
        standard = standard_cfg_loss(eps_cond, noise)
        loss = standard + config.mix_lambda * aligned
        stats["loss_standard"] = standard.detach()
    stats["loss"] = loss.detach()
    return loss, stats


def diffusion_training_loss(net: Network, x0: Tensor, labels: Tensor | None, schedule: NoiseSchedule,
                            config: LossConfig, null_label: int | None, generator: torch.Generator | None = None
                            ) -> tuple[Tensor, dict]:
    """One training batch end to end: (x_t, t, ε) from :func:`noised_batch`, then :func:`cfg_training_loss`.

    The ``diffguide train`` loop and the exact-testbed proof both call this function."""
    x_t, t, noise = noised_batch(x0, schedule, generator)
    return cfg_training_loss(net, x_t, t, noise, labels, config, null_label, generator)
