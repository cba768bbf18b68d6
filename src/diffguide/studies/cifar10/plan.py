"""The two CIFAR-10 studies' protocols as data (issues 13 and 14), fixed before any number is seen.

A study is a list of :class:`Unit` s, run in order by :mod:`.runner`:

- ``reference`` — Inception statistics of the 50k training images (a cache file, never in the repo);
- ``train`` / ``train_classifier`` — a diffusion model / noise-aware classifier (weights in the cache; resumable
  through the trainer's own checkpoint and ``time_limit_s``);
- ``sample`` — one sampling run scored against the reference: its metrics JSON in the results folder *is* the
  unit's completion mark. ``scale=None`` means "the scale chosen from this method's seed-0 grid JSONs" (lowest FID).

Estimated H200 seconds use docs/performance.md and the study units (2026-12-01): a plain conditional DDIM-50 step
as the contiguous-layout subset units sampled it (1.90–1.93 s per 1k samples, compiled, batch 2,500), and a CFG
step (one batched [cond, ∅] forward) twice that: 1/(263·50) s per image (205 img/s strided, the layout before
``attention_qkv_contiguous``); a classifier-guided step ×1.3 (the
guide compiled, benchmarks/results/guided_step_h200.json: an x̂0 ResNet-32 step ×1.16 over unguided; the ADM-G
units' noise-aware steps, 163–169 ms at batch 2,500 against 127.1: ×1.29; ×1.4 before the guide was compiled);
training 4,683 img/s at batch 128 plus 100 s of compilation per command; scoring (Inception features, FID, KID,
PRDC, the judge) 5 s per unit (17.7–23.6 s measured before the scoring kept its networks and ran on the GPU; 3.2–3.7 s
in the ADM-G units after the first of a process). Estimates only order and budget the work: the runner adds
:data:`FIRST_COMPILE_S` to the first sampling unit of its networks in a process, and a unit that runs over its
estimate still finishes within the command's 10 minutes (the budget leaves a minute).

Diagnostic units (not scored by FID; their own JSON in the results folder, except ``trajectories``, a cache file):
``trajectories`` (x̂0 and x_t of unguided DDPM runs at fixed steps), ``calibration`` (one guiding classifier),
``gradnorm`` (‖∇J‖ and the guide's confidence along t) and ``sample_grid`` (a PNG of 10 samples per class). They run
eagerly (no compiled network, to spare its ~100 s compilation): estimated at ``EAGER_FACTOR`` × the compiled
step cost plus ``LOAD_S`` for loading the networks and data (both guesses, stated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

DDPM_VARIANCE = "fixed_small"
"""Both studies' DDPM step variance (the models have fixed variance). Respaced, ADM's default fixed_large leaves
the last stochastic step's noise, σ² = β'_1 = 1 − ᾱ_{t_1}/ᾱ_0 (0.0021 at 100 steps, 0.0006 at 250), which the
final x̂0 step (trained for σ² ≈ 1 − ᾱ_0 = 1e-4) cannot remove: grainy samples (FID 81.9 at w = 0 against 11.1 with
DDIM-50, docs/results/cifar10_guidance_superseded/). fixed_small's σ² = β̃'_1 ≈ 1e-4 matches it."""


def sampling_variance(sampler: str) -> str | None:
    """The step variance a study unit samples with: :data:`DDPM_VARIANCE` for DDPM, else None (the checkpoint's)."""
    return DDPM_VARIANCE if sampler == "ddpm" else None


TRAINING_QKV_CONTIGUOUS = False
SAMPLING_QKV_CONTIGUOUS = True
TRAINING_KINDS = ("train", "train_classifier", "calibrate")
"""Unit kinds that train weights (a diffusion model, the noise-aware classifier, its fine-tunes)."""


class TrainingSetting(NamedTuple):
    """How a study's training units compute their networks — the attention's q/k/v layout
    (:func:`diffguide.nets.adm.qkv_layout`) and the fast path's memory format (:func:`diffguide.accel.channels_last`)
    — never what they compute (the same function to bf16 rounding). The default: strided (SDPA's math kernel),
    channels-last, as every training unit ran until 2026-12-02 (:func:`attention_qkv_contiguous`)."""

    qkv_contiguous: bool = TRAINING_QKV_CONTIGUOUS
    channels_last: bool = True

    def record(self) -> dict:
        """The setting as a unit's JSON records it (a sampling unit's too: :func:`.runner.environment`)."""
        return {"attention_qkv": "contiguous" if self.qkv_contiguous else "strided",
                "memory_format": "channels_last" if self.channels_last else "contiguous"}


STRIDED_RESULTS_SUFFIX = "_strided"
"""The sampling JSONs run strided before the switch below, kept apart in docs/results/STUDY_strided/."""


def attention_qkv_contiguous(kind: str) -> bool:
    """The attention layout a unit of this ``kind`` runs with (:func:`diffguide.nets.adm.qkv_layout`; each unit's
    JSON records the layout it ran with as ``attention_qkv``): :data:`TRAINING_QKV_CONTIGUOUS` (strided, SDPA's math
    kernel) for the :data:`TRAINING_KINDS`, :data:`SAMPLING_QKV_CONTIGUOUS` (contiguous, its fused kernels: the same
    function to bf16 rounding, faster) for every other unit.

    Until 2026-12-01 every unit of both studies ran strided, though the library's default had become contiguous.
    Switching a study mid-way changes its networks' rounding between units that claims compare, so it was an
    amendment of its own, made only after the H200 had measured the gain and before any unit ran with it.

    The rule for that amendment, fixed 2026-12-01 before any measurement: if the H200 times the guidance study's
    guided DDPM step at batch 2,500 (benchmarks/profile_sample.py or guided_step.py, both layouts in one run) at least
    10% faster with the contiguous layout, both studies' sampling units switch to it. The seed 1–3 finals already run
    strided (guidance study: no guidance, CFG, EluCD ResNet-32, reverse KL; 12 units) are then run again contiguous,
    their strided JSONs kept apart and reported beside them, so that every claim and the main table compare units of
    one layout; seed-0 grids, trained classifiers and calibration units are kept (they choose scales and classifiers
    and compare nothing). The aligned study's seed-0 standard curve (6 units) is run again likewise, and its training
    units keep the strided layout of the standard arm they are compared with. Below 10%, nothing changes.

    The measurement (2026-12-01, before any unit ran contiguous; ``benchmarks/guided_step.py --layouts-only
    --qkv-layouts contiguous,strided``, benchmarks/results/guided_step_layouts_h200.json): the EluCD ResNet-32
    β = 10 step at batch 2,500 takes 113.8 ms contiguous against 147.2 ms strided, 22.7% less (unguided: 97.4 against
    129.1). So the rule switched the sampling units; every unit run since (the guidance study's tier 3 on) ran
    contiguous, and the 18 strided JSONs it names were moved to docs/results/STUDY_strided/ to be run again."""
    return TRAINING_QKV_CONTIGUOUS if kind in TRAINING_KINDS else SAMPLING_QKV_CONTIGUOUS


CFG_STEP_S = 1.0 / (263 * 50)  # seconds per image and sampler step with CFG (two network passes, batched)
GUIDED_FACTOR = 1.3
TRAIN_IMG_S = 4683.0
CONTIGUOUS_TRAIN_IMG_S = TRAIN_IMG_S * 6420.3 / 5138.5
"""The standard-loss training rate in the q/k/v-contiguous, contiguous-memory setting (amendment 5 of the aligned
study): the study's measured 4,683 img/s (strided, channels_last) scaled by the benchmark's ratio of the two settings
timed in one run (6,420.3 / 5,138.5 img/s, benchmarks/results/cifar_train_settings_h200.json): ~5,851 img/s."""
ALIGNED_TRAIN_IMG_S = 2781.0
"""Batch images per second of the aligned loss's training step (it forwards [x_t, x_t] with [c̃, ∅], twice the
batch): the H200's batch-128 strided channels_last row of benchmarks/results/cifar_train_formats_h200.json."""
COMPILE_S = 100.0
FIRST_COMPILE_S = 75.0
"""Seconds a sampling unit takes over its estimate when it is the first of its networks and shapes in a process
(:func:`.runner.compile_key`): compilation. Measured in the noise-aware block's units (2026-12-02): 130 s for the
first ADM-G final against 57 for the next ones; 20–27 s for the first of a kind whose graphs torch's compile cache
on the machine already held. Without it a command's last unit could start with a minute left and run two."""
SCORING_S = 5.0
FEATURES_IMG_S = 2300.0  # the reference's Inception features, benchmarks/results/cifar_fid_features_h200.json
EAGER_FACTOR = 3.0
LOAD_S = 30.0
CALIBRATION_IMG_S = 20_000.0  # classifier forwards per second, small CIFAR ResNets / small_classifier (a guess)
GRID_PER_CLASS = 10


@dataclass(frozen=True)
class Unit:
    """One unit of work. ``params``: for 'sample' — method, scale (None: chosen from seed 0), sampler, steps, seed,
    num_samples, group; for training units — the config deltas. ``needs``: ids of units whose outputs it uses."""

    id: str
    kind: str
    params: dict = field(default_factory=dict)
    needs: tuple = ()
    est_s: float = 0.0


def step_seconds(*, cfg: bool, guided: bool) -> float:
    """Estimated H200 seconds per image and compiled sampler step (see the module docstring)."""
    return CFG_STEP_S * (1.0 if cfg else 0.5) * (GUIDED_FACTOR if guided else 1.0)


def sampling_seconds(num_samples: int, steps: int, *, cfg: bool, guided: bool) -> float:
    """Estimated H200 seconds of one sampling run + its scoring (see the module docstring)."""
    return num_samples * steps * step_seconds(cfg=cfg, guided=guided) + SCORING_S


def training_seconds(steps: int, batch_size: int = 128, images_per_s: float = TRAIN_IMG_S) -> float:
    return steps * batch_size / images_per_s + COMPILE_S


def reference_unit() -> Unit:
    return Unit("reference", "reference", {"num_images": 50_000}, (), 50_000 / FEATURES_IMG_S)


def sample_unit(study_prefix: str, method: str, spec: dict, scale, *, sampler: str, steps: int, seed: int,
                num_samples: int, group: str, needs=(), extension: int = 0) -> Unit:
    """A sampling + scoring unit; its id (the JSON's name) says everything that identifies it. ``extension`` k ≠ 0
    marks a seed-0 grid point beyond the fixed grid (:func:`extension_scales`): it runs only if the runner's edge
    rule asks for it."""
    scale_tag = "best" if scale is None else f"{scale:g}".replace("-", "m")
    uid = f"{study_prefix}{group}__{method}__s{scale_tag}__{sampler}{steps}__seed{seed}__n{num_samples}"
    est = sampling_seconds(num_samples, steps, cfg=spec.get("cfg", False), guided=spec.get("guide") is not None)
    params = {"method": method, "scale": scale, "sampler": sampler, "steps": steps, "seed": seed,
              "num_samples": num_samples, "group": group, **({"extension": extension} if extension else {})}
    return Unit(uid, "sample", params, ("reference", *needs, *spec.get("needs", ())), est)


def extension_scales(grid, extensions: int) -> list[tuple[int, float]]:
    """The grid points the edge rule may add beyond ``grid``: (−k, min/2^k) and (k, max·2^k) for k = 1..extensions
    (none below a grid that starts at 0, none at all for the grid (0,))."""
    low, high = min(grid), max(grid)
    below = [(-k, low / 2**k) for k in range(1, extensions + 1)] if low > 0 else []
    return below + ([(k, high * 2**k) for k in range(1, extensions + 1)] if high > 0 else [])


def probe_seconds(num_samples: int, steps: int, *, cfg: bool, guided: bool) -> float:
    """Estimated H200 seconds of an eager diagnostic sampling run (no Inception features, see the docstring)."""
    return LOAD_S + EAGER_FACTOR * num_samples * steps * step_seconds(cfg=cfg, guided=guided)


def trajectory_unit(*, sampler: str, steps: int, seed: int, num_samples: int) -> Unit:
    """Unguided, conditional runs of the base model (labels balanced) whose x̂0 and x_t are kept at fixed steps."""
    params = {"sampler": sampler, "steps": steps, "seed": seed, "num_samples": num_samples}
    return Unit(f"trajectories__{sampler}{steps}__seed{seed}__n{num_samples}", "trajectories", params, (),
                probe_seconds(num_samples, steps, cfg=False, guided=False))


def calibration_unit(guide: str, trajectories: Unit, *, test_images: int, timesteps, needs=()) -> Unit:
    """Calibration of the guiding classifier ``guide`` on clean test images, on the trajectories' x̂0 (or x_t for a
    noise-aware guide) and, noise-aware, on test images noised at ``timesteps`` (ECE_t)."""
    forwards = test_images * (1 + len(timesteps)) + trajectories.params["num_samples"] * 11
    params = {"guide": guide, "trajectories": trajectories.id, "timesteps": list(timesteps), "test_images": test_images}
    return Unit(f"calibration__{guide}", "calibration", params, (trajectories.id, *needs),
                LOAD_S + 2 * forwards / CALIBRATION_IMG_S)


def gradnorm_unit(methods: dict, names, *, sampler: str, steps: int, seed: int, num_samples: int) -> Unit:
    """‖∇J‖ and the guide's confidence along t for ``names`` at their chosen scales (waits for their grids)."""
    est = sum(probe_seconds(num_samples, steps, cfg=methods[m].get("cfg", False), guided=True) for m in names)
    params = {"methods": list(names), "scale": None, "sampler": sampler, "steps": steps, "seed": seed,
              "num_samples": num_samples}
    needs = tuple(n for m in names for n in methods[m].get("needs", ()))
    return Unit(f"gradnorm__{sampler}{steps}__seed{seed}__n{num_samples}", "gradnorm", params, needs, est)


def sample_grid_unit(method: str, spec: dict, scale, *, sampler: str, steps: int, seed: int,
                     per_class: int = GRID_PER_CLASS, num_classes: int = 10) -> Unit:
    """A PNG of ``per_class`` samples of each class (labels balanced, fixed seed), one row per class."""
    n = per_class * num_classes
    tag = "best" if scale is None else f"{scale:g}".replace("-", "m")
    params = {"method": method, "scale": scale, "sampler": sampler, "steps": steps, "seed": seed, "num_samples": n,
              "group": "samplegrid"}
    est = probe_seconds(n, steps, cfg=spec.get("cfg", False), guided=spec.get("guide") is not None)
    return Unit(f"samplegrid__{method}__s{tag}__{sampler}{steps}__seed{seed}__n{n}", "sample_grid", params,
                tuple(spec.get("needs", ())), est)
