"""The CIFAR-10 studies of issues 13 (classifier guidance) and 14 (the CFG-aligned loss): plans fixed as data
(:mod:`.guidance_plan`, :mod:`.aligned_plan`), a resumable budgeted runner (:mod:`.runner`) and report writers
(:mod:`.report`). ``--tiny`` (:mod:`.assets`) runs the same pipeline on random stand-ins on the CPU."""

from __future__ import annotations

from pathlib import Path

from . import aligned_plan, guidance_plan
from .runner import DEFAULT_CACHE, Study, describe, load_results, run_next, status

__all__ = ["DEFAULT_CACHE", "Study", "describe", "load_results", "run_next", "status", "guidance_study",
           "aligned_study", "TINY_STEPS"]

TINY_STEPS = 3  # sampler steps of every --tiny run


def guidance_study(assets: dict, tiny: bool = False) -> Study:
    """Issue 13's plan; ``tiny``: 24 samples per run, 3 sampler steps, the first 2 points of each scale grid and
    no edge extensions, 2 classifier training and 2 fine-tuning steps, 40 trajectories, 80 test images, 20 samples
    for ‖∇J‖."""
    units = guidance_plan.units(24, 24, TINY_STEPS, TINY_STEPS, grid_limit=2, classifier_steps=2, finetune_steps=2,
                                trajectory_samples=40, test_images=80, gradnorm_samples=20,
                                grid_extensions=0) if tiny \
        else guidance_plan.units()
    return Study(guidance_plan.NAME, units, guidance_plan.methods(), assets, tiny)


def aligned_study(assets: dict, tiny: bool = False, setting_measurement: Path | None = None) -> Study:
    """Issue 14's plan; ``tiny``: 2 training steps per arm, 24 samples, w ∈ {0, 1, 2}, two step points.
    ``setting_measurement``: the benchmark JSON that amendment 5's rule reads (:func:`.aligned_plan.training_setting`:
    how the training units compute; None or absent: as before it)."""
    if tiny:
        units = aligned_plan.units(24, steps_scale=1e-4, step_points=(("ddim", 2), ("ddpm", TINY_STEPS)),
                                   w_grid=(0.0, 1.0, 2.0), curve_steps=TINY_STEPS)
    else:
        units = aligned_plan.units()
    methods = aligned_plan.methods()
    if tiny:
        for spec in methods.values():
            spec["grid"] = (0.0, 1.0, 2.0)
    return Study(aligned_plan.NAME, units, methods, assets, tiny, aligned_plan.training_setting(setting_measurement))
