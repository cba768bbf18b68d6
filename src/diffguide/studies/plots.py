"""Figures of the testbed studies (matplotlib through its Agg canvas, no pyplot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffguide.toy import GaussianMixture

from .report import figure, save_figure
from .sweep import VANISHED, study_labels

__all__ = ["COLORS", "plot_samples", "plot_gradients", "plot_tradeoff", "plot_onehot", "plot_ece_t",
           "plot_noise_aware_gradients"]

COLORS = {"log_softmax": "tab:gray", "baseline": "black", "tilted": "tab:purple", "entropy": "tab:brown",
          "reverse_kl": "tab:red", "forward_kl": "tab:blue", "js": "tab:green", "hellinger": "tab:orange",
          "reference": "tab:cyan"}


def plot_samples(mixture: GaussianMixture, panels: list[tuple[str, Tensor, dict]], n: int, path: Path,
                 extent: tuple[float, float] = (-5.5, 6.0)) -> None:
    """Samples (first seed) of each method over the true density, coloured by target class."""
    grid = torch.linspace(*extent, 160, dtype=torch.float64)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    points = torch.stack([gx.flatten(), gy.flatten()], 1)
    if mixture.dim > 2:
        points = torch.cat([points, points.new_zeros(len(points), mixture.dim - 2)], 1)
    density = torch.logsumexp(mixture.log_joint(points, 1.0), 1).exp().reshape(gx.shape)
    labels = study_labels(n, mixture.num_classes)
    columns = 4
    rows = (len(panels) + columns - 1) // columns
    fig, axes = figure(rows, columns, (3.1 * columns, 3.2 * rows))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for ax, (name, x, r) in zip(axes.flat, panels):
        ax.contourf(gx, gy, density, levels=12, cmap="Greys")
        for k in range(mixture.num_classes):
            pts = x[labels == k][:250]
            ax.scatter(pts[:, 0], pts[:, 1], s=1.5, color=colors[k], label=f"y={k}")
        ax.set_title(f"{name}\nacc {r['mean']['accuracy']:.2f} prec {r['mean']['precision']:.2f} "
                     f"minority {r['mean']['minority_ratio']:.2f} SW {r['mean']['distance']:.2f}", fontsize=6.5)
        ax.set_xlim(*extent)
        ax.set_ylim(*extent)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=6, markerscale=4, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path)


def plot_gradients(panels: list[tuple[str, list[tuple[str, str, dict]]]], path: Path, columns: int = 3) -> None:
    """‖∇_{x̂0} J‖ (per step the median over samples, averaged over seeds) against t, one panel per setting;
    values below 1e-20 are drawn at 1e-20."""
    rows = (len(panels) + columns - 1) // columns
    fig, axes = figure(rows, columns, (5.2 * columns, 4 * rows))
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    for ax, (title, curves) in zip(axes.flat, panels):
        for name, family, r in curves:
            values = np.maximum(np.asarray(r["grad_curve"], dtype=float), 1e-20)
            ax.plot(r["grad_t"], values, label=name, color=COLORS.get(family),
                    linestyle="--" if "rule=" in name else "-")
        ax.axhline(VANISHED, color="k", linewidth=0.5, linestyle=":")
        ax.set_yscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("t (1000 = pure noise)")
        ax.set_ylabel("median ‖∇_{x̂0} J‖")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path)


def plot_tradeoff(results: dict, methods: list, references: dict, floor: tuple, path: Path) -> None:
    """Precision and accuracy against coverage (minority-mode ratio) and distance, every configuration."""
    fig, axes = figure(1, 3, (16, 4.8))
    axes = axes[0]
    pairs = (("minority_ratio", "precision"), ("minority_ratio", "distance"), ("accuracy", "distance"))
    seen = set()
    for ax, (xm, ym) in zip(axes, pairs):
        for m in methods:
            r = results[m.key]["mean"]
            label = f"{m.family}" if (m.family, ax) not in seen and m.logits == "posterior" else None
            seen.add((m.family, ax))
            marker = "o" if m.scale == 1 else "^"
            face = COLORS[m.family] if (m.temperature != 1 and m.logits == "posterior") else "none"
            ax.scatter(r[xm], r[ym], marker=marker, s=22, edgecolors=COLORS[m.family], facecolors=face, label=label,
                       linewidths=1.0 if m.logits == "posterior" else 0.5)
        for name, r in references.items():
            ax.scatter(r["mean"][xm], r["mean"][ym], marker="*", s=90, color=COLORS["reference"])
            ax.annotate(name.split(",")[0], (r["mean"][xm], r["mean"][ym]), fontsize=6)
        if ym == "distance":
            ax.axhspan(floor[0] - floor[1], floor[0] + floor[1], color="tab:cyan", alpha=0.2)
        ax.set_xlabel(xm.replace("_", " "))
        ax.set_ylabel(ym)
    axes[0].legend(fontsize=7, title="filled: T=0.1, hollow: T=1\n(thin: joint logits); ○ s=1, △ s=3",
                   title_fontsize=6)
    fig.tight_layout()
    save_figure(fig, path)


def plot_onehot(table: dict, path: Path) -> None:
    fig, axes = figure(1, 1, (7, 4.5))
    ax = axes[0, 0]
    gaps = [r["gap"] for r in table["rows"]]
    for name in table["rows"][0]["norms"]:
        family = name.split(" ")[0]
        values = np.maximum([r["norms"][name] for r in table["rows"]], 1e-300)
        ax.plot(gaps, values, marker="o", label=name, color=COLORS.get(family),
                linestyle="--" if "entropy" in name or "ℓ" in name else "-")
    ax.set_yscale("log")
    ax.set_ylim(1e-20, 10)
    ax.set_xlabel("logit gap Δ (p_y = e^Δ/(e^Δ + K − 1))")
    ax.set_ylabel("‖∇_f term‖")
    ax.legend(fontsize=6)
    ax.set_title("Proposition 3 at the objective level (K = 4)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)



def plot_ece_t(calibration: dict, path: Path) -> None:
    fig, axes = figure(1, 2, (11, 4))
    axes = axes[0]
    for name, r in calibration.items():
        c = r["ece_t"]
        t = np.asarray(c["t"])
        for ax, mean, std in ((axes[0], np.asarray(c["ece_mean"]), np.asarray(c["ece_std"])),
                              (axes[1], np.asarray(c["mean_confidence_mean"]) - np.asarray(c["accuracy_mean"]), None)):
            line, = ax.plot(t, mean, marker="o", markersize=3, label=name, linestyle=":" if "exact" in name else "-")
            if std is not None:
                ax.fill_between(t, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    axes[0].set_ylabel("binned ECE at t (mean ± std over seeds)")
    axes[1].set_ylabel("mean confidence − accuracy at t (> 0: overconfident)")
    axes[1].axhline(0, color="k", linewidth=0.5)
    for ax in axes:
        ax.set_xlabel("t (1000 = pure noise)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def plot_noise_aware_gradients(sampling: dict, names: list[str], scales, path: Path) -> None:
    fig, axes = figure(1, len(scales), (5.5 * len(scales), 4))
    for ax, s in zip(axes[0], scales):
        for name in names:
            r = sampling[f"{name}, s={s:g}"]
            ax.plot(r["grad_t"], np.maximum(r["grad_curve"], 1e-12), label=name,
                    linestyle=":" if "exact" in name else "-")
        ax.set_yscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("t (1000 = pure noise)")
        ax.set_ylabel("median ‖∇_{x_t} log p(y|x_t)‖")
        ax.set_title(f"noise-aware guidance, s = {s:g}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
