"""diffusers folders through the loaders, the Python API and ``diffguide sample``: the layouts ``save_pretrained`` writes,
class-conditional models and the null label, refusals, and the message when diffusers is missing.

Tiny float32 ``UNet2DModel`` s with random weights written into tmp_path (no downloads). diffusers is a test
dependency: a plain import, so a missing install fails loudly.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from diffguide import sample
from diffguide.cli import main
from diffguide.diffusers_adapter import MissingDiffusersError, is_diffusers_folder, load_diffusers
from diffguide.noise import SeededNoise


def tiny_unet(seed: int = 0, **extra) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8,
                       **extra).eval().requires_grad_(False)


@pytest.fixture
def pipeline_dir(tmp_path):
    """A DDPMPipeline folder (model_index.json, unet/, scheduler/) holding a DDIMScheduler config."""
    path = tmp_path / "pipe"
    DDPMPipeline(unet=tiny_unet(), scheduler=DDIMScheduler()).save_pretrained(path)
    return path


def model_dir(path, unet, scheduler=None, options=None):
    """A model folder: config.json + weights, and scheduler_config.json / diffguide.json beside them when given."""
    unet.save_pretrained(path)
    if scheduler is not None:
        scheduler.save_pretrained(path)
    if options is not None:
        (path / "diffguide.json").write_text(json.dumps(options))
    return path


def run(*args):
    return CliRunner().invoke(main, ["sample", *map(str, args), "--device", "cpu"])


def test_every_layout_loads_the_saved_network(tmp_path, pipeline_dir):
    unet = tiny_unet()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([999, 3])
    expected = unet(x, t).sample
    scheduler_only = tmp_path / "sched"
    DDPMScheduler(variance_type="fixed_large").save_pretrained(scheduler_only)
    layouts = {
        "pipeline": (pipeline_dir, None, "DDIMScheduler"),
        "model + scheduler_config.json": (model_dir(tmp_path / "m", tiny_unet(), DDIMScheduler()), None,
                                          "DDIMScheduler"),
        "model, scheduler folder": (model_dir(tmp_path / "m2", tiny_unet()), scheduler_only, "DDPMScheduler"),
    }
    for name, (path, scheduler, class_name) in layouts.items():
        assert is_diffusers_folder(path), name
        net, config = load_diffusers(path, scheduler=scheduler)
        assert torch.equal(net(x, t), expected), name  # ε-prediction: the UNet's output, given the same timesteps
        assert config.mapping.class_name == class_name
        assert config.kwargs == {"in_channels": 3, "out_channels": 3, "image_size": 8, "num_classes": None}
    assert config.mapping.variance == "fixed_large"


def test_a_model_without_scheduler_config_is_refused(tmp_path):
    path = model_dir(tmp_path / "m", tiny_unet())
    with pytest.raises(FileNotFoundError, match="no scheduler config"):
        load_diffusers(path)


def test_class_conditional_model_null_label_comes_from_diffguide_json(tmp_path):
    unet = tiny_unet(num_class_embeds=4)
    with_null = model_dir(tmp_path / "a", unet, DDPMScheduler(), {"null_label": 3})
    net, config = load_diffusers(with_null)
    assert (net.null_label, config.kwargs["num_classes"]) == (3, 3)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 10])
    assert torch.equal(net(x, t, None), unet(x, t, class_labels=torch.tensor([3, 3])).sample)
    net, config = load_diffusers(model_dir(tmp_path / "b", unet, DDPMScheduler()))
    assert (net.null_label, config.kwargs["num_classes"]) == (None, 4)
    with pytest.raises(ValueError, match="null_label=2: expected the last class embedding, 3"):
        load_diffusers(with_null, null_label=2)


@pytest.mark.parametrize("config, message", [
    ({"_class_name": "UNet2DConditionModel"}, "text- or cross-attention-conditioned models are out of scope"),
    ({"_class_name": "DiTTransformer2DModel"}, r"latent transformer models \(DiT \+ VAE\) are out of scope"),
    ({"_class_name": "UNet2DModel", "sample_size": 8, "time_embedding_type": "fourier"}, "time_embedding_type="),
    ({"_class_name": "UNet2DModel", "sample_size": 8, "class_embed_type": "identity"}, "class_embed_type="),
    ({"_class_name": "UNet2DModel", "sample_size": [8, 16]}, "sample_size="),
    ({"_class_name": "UNet2DModel", "sample_size": 8, "class_embed_type": "timestep"}, "name the number of classes"),
])
def test_unmappable_model_configs_are_refused_by_field(tmp_path, config, message):
    (tmp_path / "config.json").write_text(json.dumps(config))
    DDPMScheduler().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        load_diffusers(tmp_path)


def test_a_latent_pipeline_is_refused(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    for part in ("transformer", "vae", "scheduler"):
        (tmp_path / part).mkdir()
    with pytest.raises(ValueError, match=r"without unet/ .*latent models with a VAE are out of scope"):
        load_diffusers(tmp_path)


def test_cli_samples_a_diffusers_pipeline_as_diffusers_ddim_does(tmp_path, pipeline_dir):
    """`diffguide sample --model <pipeline> --sampler ddim --steps 5` equals diffusers' DDIMScheduler loop started from
    the same x_T (sample k's first SeededNoise draw), to the uint8 level: the two float32 runs differ by ~1e-6, so a
    rounding boundary can flip a pixel by one level, and nothing more."""
    out = tmp_path / "out"
    result = run("--model", pipeline_dir, "--out", out, "--num-samples", 3, "--batch-size", 2, "--sampler", "ddim",
                 "--steps", 5)
    assert result.exit_code == 0, result.output
    with np.load(out / "samples.npz") as data:
        images = data["arr_0"]
        assert "arr_1" not in data  # unconditional
    x = torch.stack([SeededNoise(0, [k], (3, 8, 8)).initial()[0] for k in range(3)])
    unet = UNet2DModel.from_pretrained(pipeline_dir / "unet")
    scheduler = DDIMScheduler.from_pretrained(pipeline_dir / "scheduler")
    scheduler.set_timesteps(5)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, use_clipped_model_output=True).prev_sample
    expected = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert images.shape == (3, 8, 8, 3)
    diff = np.abs(images.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_cli_classifier_free_guidance_needs_a_named_null_label(tmp_path):
    unet = tiny_unet(num_class_embeds=4)
    named = model_dir(tmp_path / "a", unet, DDPMScheduler(), {"null_label": 3})
    result = run("--model", named, "--out", tmp_path / "o1", "--num-samples", 4, "--steps", 3, "--cfg-w", 1.5,
                 "--labels", "balanced")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "o1" / "samples.npz") as data:
        assert data["arr_1"].tolist() == [0, 1, 2, 0]  # classes 0..2; 3 is the null label
    unnamed = model_dir(tmp_path / "b", unet, DDPMScheduler())
    result = run("--model", unnamed, "--out", tmp_path / "o2", "--num-samples", 2, "--steps", 3, "--cfg-w", 1.5)
    assert result.exit_code != 0 and "null label" in result.output and "Traceback" not in result.output


def test_python_api_samples_a_diffusers_model(pipeline_dir):
    result = sample(model=str(pipeline_dir), num_samples=2, batch_size=2, sampler="ddpm", steps="4", progress=False)
    assert result.images.shape == (2, 8, 8, 3) and result.labels is None


def test_missing_diffusers_says_how_to_install_it(monkeypatch, pipeline_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    with pytest.raises(MissingDiffusersError, match=r"pip install 'diffguide\[diffusers\]'"):
        load_diffusers(pipeline_dir)
    result = run("--model", pipeline_dir, "--out", tmp_path / "o", "--num-samples", 1)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "needs the diffusers package" in result.output and "pip install 'diffguide[diffusers]'" in result.output
