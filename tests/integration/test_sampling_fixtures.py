"""Whole guided sampling loops of guided-diffusion, reproduced step by step by the core (Denoiser + Guidance +
samplers) with the fixture networks: DDPM 'linear/10' with guidance on the mean, DDIM 'cosine/ddim10' (η = 0) with
guidance on the score; learned-range variance, clipped x̂0, classifier gradient × 30 at the original timestep."""

import json

import numpy as np
import pytest
import torch

from conftest import shared_path
from diffguide import ClassifierGuidance, Denoiser, FixedNoise, Guidance, NoiseSchedule, ddim, ddpm
from diffguide.checkpoints import NetworkConfig, load_adm_checkpoint
from diffguide.guidance.objectives import LogLikelihood

LOOPS = [(unet, schedule, respacing) for unet in ("unet_legacy_attn", "unet_new_attn")
         for schedule, respacing in (("linear", "10"), ("cosine", "ddim10"))]


@pytest.fixture(scope="module")
def networks():
    manifest = json.loads(shared_path("fixtures/guided-diffusion/manifest.json").read_text())

    def load(case):
        spec = manifest["cases"][case]
        path = shared_path(f"fixtures/guided-diffusion/{spec['state_dict']}")
        return load_adm_checkpoint(path, NetworkConfig(kind=spec["kind"], kwargs=spec["config"]))

    return {case: load(case) for case in ("unet_legacy_attn", "unet_new_attn", "classifier")}


@pytest.mark.parametrize("unet, schedule, respacing", LOOPS)
def test_guided_loop_matches_guided_diffusion(networks, vectors, unet, schedule, respacing):
    key = f"sample/{unet}/{schedule}/{respacing}"
    tensor = lambda name: torch.tensor(vectors[f"{key}/{name}"], dtype=torch.float32)  # noqa: E731
    denoiser = Denoiser(networks[unet], NoiseSchedule.create(schedule, respacing), variance="learned_range",
                        clip_x0=True, num_classes=10)
    sampler = ddpm if respacing == "10" else ddim
    guidance = Guidance(classifier=ClassifierGuidance(networks["classifier"], on="x_t",
                                                      objective=LogLikelihood(1.0, 1.0), scale=30.0),
                        rule="mean" if sampler is ddpm else "score")  # ADM: condition_mean / condition_score
    records = []
    out = sampler(denoiser, FixedNoise(tensor("x_T"), tensor("noise")), torch.tensor(vectors[f"{key}/y"]),
                  guidance=guidance, callback=records.append)
    assert len(records) == 10
    x0 = np.stack([r.x0.double().numpy() for r in records])
    samples = np.stack([r.x_t.double().numpy() for r in records[1:]] + [out.samples.double().numpy()])
    x0_error = np.abs(x0 - vectors[f"{key}/pred_xstart"]).reshape(10, -1).max(1)
    sample_error = np.abs(samples - vectors[f"{key}/samples"]).reshape(10, -1).max(1)
    print(f"{key}: max |x0 error| {x0_error.max():.3g}, max |sample error| {sample_error.max():.3g}")
    assert x0_error.max() <= 1e-4, x0_error
    assert sample_error.max() <= 1e-4, sample_error
