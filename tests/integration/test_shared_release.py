"""The released CIFAR-10 model of shared/ (config format version 1) under config format version 2: it loads with the
sampling defaults it was always sampled with, and a version-2 copy of it samples bit-identically."""

from __future__ import annotations

import json

import numpy as np

from diffguide import sample
from diffguide.checkpoints import load_network, save_network
from diffguide.train.config import TrainConfig, config_differences

from conftest import shared_path


def test_shared_version_1_release_loads_and_a_version_2_copy_samples_the_same(tmp_path):
    folder = shared_path("assets/diffusion/cifar10-cond-17m-v0")
    assert json.loads((folder / "config.json").read_text())["version"] == 1
    net, config = load_network(folder)
    assert (config.variance_type, config.null_label, config.clip_x0) == ("fixed_large", 10, True)
    save_network(net, tmp_path / "v2", schedule=config.schedule, num_train_timesteps=config.num_train_timesteps,
                 extra=config.extra)
    assert load_network(tmp_path / "v2")[1] == config
    runs = [sample(model=str(m), num_samples=3, batch_size=3, cfg_w=1.0, sampler="ddim", steps="ddim5", seed=3,
                   progress=False, device="cpu") for m in (folder, tmp_path / "v2")]
    assert np.array_equal(runs[0].images, runs[1].images) and np.array_equal(runs[0].labels, runs[1].labels)
    saved = json.loads((folder / "train_config.json").read_text())
    train_config = TrainConfig.from_dict(saved)
    assert config_differences(saved, train_config) == {}  # the release's run config still resumes
    assert "model_channels" not in train_config.to_dict()["net"]  # adm_unet: only adm_kwargs are recorded now
