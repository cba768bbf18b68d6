"""Noise schedules, respacing, and conversions between ε, x̂0, score and v.

Everything here follows guided-diffusion (ADM) arithmetic exactly: schedules are built in float64 NumPy,
and per-step coefficients are gathered and cast to the working dtype at use, as ADM's ``_extract_into_tensor`` does.

Two indices appear throughout:
- ``t`` — an *original* timestep in ``0..T-1`` (what networks and noise-aware classifiers are trained on);
- ``i`` — a *step index* of a (possibly respaced) schedule, ``0..T'-1``; ``schedule.timesteps[i]`` is its ``t``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "NoiseSchedule",
    "named_betas",
    "space_timesteps",
    "eps_to_x0",
    "x0_to_eps",
    "eps_to_score",
    "score_to_eps",
    "x0_eps_to_v",
    "v_to_eps",
    "noised_batch",
]


def named_betas(name: str, num_timesteps: int = 1000) -> np.ndarray:
    """β_t of a named schedule (float64).

    - ``linear``: β linearly from 1e-4·(1000/T) to 0.02·(1000/T) (Ho et al. 2020, scaled as ADM does);
    - ``cosine``: β_t = min(1 − ᾱ(t+1)/ᾱ(t), 0.999) with ᾱ(s) = cos²((s/T + 0.008)/1.008 · π/2) (Nichol & Dhariwal 2021).
    """
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps: expected a positive integer, got {num_timesteps!r}")
    if name == "linear":
        scale = 1000 / num_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)
    if name == "cosine":
        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [
                min(1 - alpha_bar((k + 1) / num_timesteps) / alpha_bar(k / num_timesteps), 0.999)
                for k in range(num_timesteps)
            ],
            dtype=np.float64,
        )
    raise ValueError(f"schedule: expected 'linear' or 'cosine', got {name!r}")


_SECTIONS = re.compile(r"^\d+(,\d+)*$")


def space_timesteps(num_timesteps: int, spacing: str | int | Sequence[int] | None) -> list[int]:
    """The original timesteps kept by a respacing string, sorted ascending (ADM's ``space_timesteps``).

    - ``None`` or ``T``: all steps;
    - a list or tuple of integers: exactly those original timesteps (e.g. a diffusers scheduler's ``timesteps``);
    - ``"N"``: N steps spread evenly (rounded) over ``0..T-1``;
    - ``"a,b,c"``: T split into equal sections, section k keeps its own count, spread evenly;
    - ``"ddimN"``: ``range(0, T, stride)`` for the integer stride that gives exactly N steps (DDIM's spacing).
    """
    if spacing is None:
        return list(range(num_timesteps))
    if isinstance(spacing, (list, tuple)):
        return _explicit_timesteps(num_timesteps, spacing)
    text = str(spacing).strip()
    if text.startswith("ddim"):
        count_text = text[len("ddim"):]
        if not count_text.isdigit() or int(count_text) < 1:
            raise ValueError(f"spacing: expected 'ddimN' with N a positive integer, got {spacing!r}")
        desired = int(count_text)
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired:
                return list(range(0, num_timesteps, stride))
        raise ValueError(
            f"spacing: {spacing!r} needs an integer stride that gives exactly {desired} of {num_timesteps} steps; "
            f"none exists (try 'ddim' with a count such as {_ddim_counts_near(num_timesteps, desired)})"
        )
    if not _SECTIONS.match(text):
        raise ValueError(f"spacing: expected 'N', 'a,b,c' or 'ddimN' (e.g. '250', '10,15,20', 'ddim25'), got {spacing!r}")
    counts = [int(c) for c in text.split(",")]
    size_per, extra = divmod(num_timesteps, len(counts))
    start, steps = 0, []
    for k, count in enumerate(counts):
        size = size_per + (1 if k < extra else 0)
        if count < 1 or size < count:
            raise ValueError(f"spacing: section {k} has {size} timesteps and cannot keep {count} of them ({spacing!r})")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        steps += [start + round(stride * j) for j in range(count)]
        start += size
    return sorted(set(steps))


def _explicit_timesteps(num_timesteps: int, timesteps: Sequence[int]) -> list[int]:
    """A list of kept original timesteps, checked: integers in [0, T), no repeats, at least one; sorted ascending."""
    if not timesteps or not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in timesteps):
        raise ValueError(f"spacing: expected a non-empty list of integer timesteps, got {list(timesteps)[:8]!r}")
    keep = sorted(int(t) for t in timesteps)
    if keep[0] < 0 or keep[-1] >= num_timesteps or len(set(keep)) != len(keep):
        raise ValueError(f"spacing: expected distinct timesteps in [0, {num_timesteps}), got {list(timesteps)[:8]!r}")
    return keep


def _ddim_counts_near(num_timesteps: int, desired: int) -> str:
    valid = sorted({len(range(0, num_timesteps, s)) for s in range(1, num_timesteps)})
    near = sorted(valid, key=lambda c: abs(c - desired))[:3]
    return ", ".join(f"ddim{c}" for c in sorted(near))


def _spacing_text(spacing) -> str:
    """How ``to_dict`` records a spacing: the string itself, or ``'timesteps:a,b,…'`` for an explicit list."""
    if isinstance(spacing, (list, tuple)):
        return "timesteps:" + ",".join(str(int(t)) for t in spacing)
    return str(spacing)


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete diffusion schedule, possibly respaced (ADM's ``SpacedDiffusion``).

    ``betas[i]`` are the betas of the kept steps, recomputed from the kept ᾱ: β'_i = 1 − ᾱ_{t_i}/ᾱ_{t_{i−1}}.
    ``timesteps[i]`` is the original timestep of step ``i`` — the only place that mapping lives.
    """

    betas: np.ndarray
    timesteps: np.ndarray
    num_train_timesteps: int
    name: str = "custom"
    spacing: str | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def create(cls, name: str = "linear", spacing: str | int | None = None, num_train_timesteps: int = 1000) -> "NoiseSchedule":
        """A named schedule of ``num_train_timesteps`` steps, respaced by ``spacing`` (see :func:`space_timesteps`)."""
        base = named_betas(name, num_train_timesteps)
        return cls.from_betas(base, spacing, name=name)

    @classmethod
    def from_betas(cls, base_betas: np.ndarray, spacing: str | int | Sequence[int] | None = None,
                   name: str = "custom") -> "NoiseSchedule":
        base_betas = np.asarray(base_betas, dtype=np.float64)
        if base_betas.ndim != 1 or not np.all((base_betas > 0) & (base_betas < 1)):
            raise ValueError("base_betas: expected a 1-D array with every value in (0, 1)")
        keep = space_timesteps(len(base_betas), spacing)
        alphas_cumprod = np.cumprod(1.0 - base_betas)
        last, betas = 1.0, []
        for t in keep:
            betas.append(1 - alphas_cumprod[t] / last)
            last = alphas_cumprod[t]
        return cls(
            betas=np.array(betas, dtype=np.float64),
            timesteps=np.array(keep, dtype=np.int64),
            num_train_timesteps=len(base_betas),
            name=name,
            spacing=None if spacing is None else _spacing_text(spacing),
        )

    def __len__(self) -> int:
        return len(self.betas)

    # --- float64 per-step arrays (ADM's GaussianDiffusion attributes) ---
    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas)

    @property
    def alphas_cumprod_prev(self) -> np.ndarray:
        return np.append(1.0, self.alphas_cumprod[:-1])

    @property
    def posterior_variance(self) -> np.ndarray:
        """β̃_i = β_i (1 − ᾱ_{i−1}) / (1 − ᾱ_i): the 'fixed small' variance."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self) -> np.ndarray:
        """log β̃ with β̃_0 (= 0) replaced by β̃_1, as ADM does."""
        pv = self.posterior_variance
        return np.log(np.append(pv[1], pv[1:])) if len(pv) > 1 else np.log(self.betas)

    @property
    def large_variance(self) -> np.ndarray:
        """The 'fixed large' variance: β_i, with β̃_1 at step 0 (ADM)."""
        pv = self.posterior_variance
        return np.append(pv[1], self.betas[1:]) if len(pv) > 1 else self.betas.copy()

    @property
    def log_betas(self) -> np.ndarray:
        return np.log(self.betas)

    @property
    def log_large_variance(self) -> np.ndarray:
        return np.log(self.large_variance)

    @property
    def posterior_mean_coef1(self) -> np.ndarray:
        return self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_mean_coef2(self) -> np.ndarray:
        return (1.0 - self.alphas_cumprod_prev) * np.sqrt(1.0 - self.betas) / (1.0 - self.alphas_cumprod)

    def _table(self, name: str, device) -> Tensor:
        """Array ``name`` on ``device``, copied there on first use and kept (not copied again every step)."""
        key = (name, torch.device(device))
        table = self._cache.get(key)
        if table is None:
            table = torch.from_numpy(np.ascontiguousarray(getattr(self, name))).to(device)
            self._cache[key] = table
        return table

    def gather(self, name: str, i: Tensor | int, like: Tensor) -> Tensor:
        """Coefficient array ``name`` at step(s) ``i``, broadcastable against ``like`` (ADM's ``_extract_into_tensor``).

        An int ``i`` reads one entry as a view, expanded over the batch: no kernel, no host synchronisation."""
        table = self._table(name, like.device)
        values = (table[i].expand(like.shape[0]) if isinstance(i, int) else table[i]).to(like.dtype)
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def sqrt_alpha_bar(self, i, like):
        return torch.sqrt(self.gather("alphas_cumprod", i, like).double()).to(like.dtype)

    def original_timesteps(self, i: Tensor | int, batch: int, device) -> Tensor:
        """Original timesteps t for step index ``i`` (a tensor [batch])."""
        t = self._table("timesteps", device)[i]
        return t.expand(batch) if t.ndim == 0 else t

    # --- forward process ---
    def q_sample(self, x0: Tensor, i: Tensor, noise: Tensor) -> Tensor:
        """x_i = sqrt(ᾱ_i)·x0 + sqrt(1 − ᾱ_i)·ε."""
        ab = self.gather("alphas_cumprod", i, x0)
        return torch.sqrt(ab) * x0 + torch.sqrt(1 - ab) * noise

    def q_posterior_mean(self, x0: Tensor, x_t: Tensor, i: Tensor | int) -> Tensor:
        """μ̃_i(x_t, x0) = c1·x0 + c2·x_t, the mean of q(x_{i−1} | x_i, x0)."""
        return self.gather("posterior_mean_coef1", i, x_t) * x0 + self.gather("posterior_mean_coef2", i, x_t) * x_t

    def to_dict(self) -> dict:
        return {"name": self.name, "spacing": self.spacing, "num_train_timesteps": self.num_train_timesteps}


# --- conversions (ᾱ given as a tensor broadcastable against x) ---

def noised_batch(x0: Tensor, schedule: NoiseSchedule, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """(x_t, t, ε) with t ~ U{0..T−1} per sample and ε ~ N(0, I), drawn from ``generator`` in that order."""
    if len(schedule) != schedule.num_train_timesteps:
        raise ValueError("schedule: training needs the full (unrespaced) schedule")
    device = generator.device if generator is not None else x0.device
    t = torch.randint(0, len(schedule), (x0.shape[0],), generator=generator, device=device).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=device, dtype=torch.float32).to(x0.device)
    return schedule.q_sample(x0.float(), t, noise).to(x0.dtype), t, noise


def eps_to_x0(x_t: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """x̂0 = (x_t − sqrt(1−ᾱ)·ε) / sqrt(ᾱ), written as sqrt(1/ᾱ)·x_t − sqrt(1/ᾱ − 1)·ε as ADM does."""
    return torch.sqrt(1.0 / alpha_bar) * x_t - torch.sqrt(1.0 / alpha_bar - 1) * eps


def x0_to_eps(x_t: Tensor, x0: Tensor, alpha_bar: Tensor) -> Tensor:
    """ε = (sqrt(1/ᾱ)·x_t − x̂0) / sqrt(1/ᾱ − 1)."""
    return (torch.sqrt(1.0 / alpha_bar) * x_t - x0) / torch.sqrt(1.0 / alpha_bar - 1)


def eps_to_score(eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """∇ log p_t(x_t) = −ε / sqrt(1 − ᾱ)."""
    return -eps / torch.sqrt(1 - alpha_bar)


def score_to_eps(score: Tensor, alpha_bar: Tensor) -> Tensor:
    """ε = −sqrt(1 − ᾱ)·∇ log p_t(x_t)."""
    return -torch.sqrt(1 - alpha_bar) * score


def x0_eps_to_v(x0: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """v = sqrt(ᾱ)·ε − sqrt(1 − ᾱ)·x0 (Salimans & Ho 2022)."""
    return torch.sqrt(alpha_bar) * eps - torch.sqrt(1 - alpha_bar) * x0


def v_to_eps(x_t: Tensor, v: Tensor, alpha_bar: Tensor) -> Tensor:
    """ε = sqrt(1 − ᾱ)·x_t + sqrt(ᾱ)·v."""
    return torch.sqrt(1 - alpha_bar) * x_t + torch.sqrt(alpha_bar) * v
