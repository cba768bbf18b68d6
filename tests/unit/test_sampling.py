"""The production sampling engine: shards, resume, ADM npz format, labels, refusal to clobber."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from diffguide import Denoiser, NoiseSchedule
from diffguide.sampling import class_labels, generate


class TinyEps(nn.Module):
    """A deterministic little conv ε-network standing in for a diffusion model."""

    def __init__(self, channels=3, classes=4):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.emb = nn.Embedding(classes + 1, channels)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)

    def forward(self, x, t, y=None):
        y = torch.full((len(x),), self.emb.num_embeddings - 1) if y is None else y
        return self.conv(x) + self.emb(y)[:, :, None, None] * (t[:, None, None, None] / 1000)


def _denoiser():
    return Denoiser(TinyEps(), NoiseSchedule.create("linear", "8"), num_classes=4)


def _run(out_dir=None, **kw):
    labels = class_labels(10, 4, "balanced")
    options = dict(num_samples=10, image_shape=(3, 8, 8), labels=labels, batch_size=4, seed=3, progress=False,
                   config={"seed": 3, "n": 10})
    options.update(kw)
    return generate(_denoiser(), out_dir=out_dir, **options)


def test_npz_is_adm_format_and_matches_in_memory(tmp_path):
    in_memory = _run()
    on_disk = _run(tmp_path / "run")
    with np.load(tmp_path / "run" / "samples.npz") as data:
        assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (10, 8, 8, 3)
        np.testing.assert_array_equal(data["arr_1"], np.arange(10) % 4)
        np.testing.assert_array_equal(data["arr_0"], in_memory.images)
    np.testing.assert_array_equal(on_disk.images, in_memory.images)
    assert (tmp_path / "run" / "grid.png").stat().st_size > 0
    assert json.loads((tmp_path / "run" / "run.json").read_text()) == {"seed": 3, "n": 10}


def test_batch_size_does_not_change_samples():
    np.testing.assert_array_equal(_run(batch_size=3).images, _run(batch_size=10).images)


def test_step_callback_gets_every_batchs_steps_as_a_direct_sampler_call(tmp_path):
    """generate's per-batch ``step_callback(start)`` is handed to the sampler of that batch: its records are those of
    the sampler called directly on the batch's noise streams and labels (the same operations on the same inputs:
    equal exactly), the samples do not change, and a resumed run calls it only for the shards it samples."""
    from diffguide.noise import SeededNoise
    from diffguide.samplers import SAMPLERS

    seen = []

    def step_callback(start):
        return lambda step: seen.append((start, step.i, step.x_t.clone(), step.x0.clone()))

    with_callback = _run(step_callback=step_callback)
    np.testing.assert_array_equal(with_callback.images, _run().images)
    assert sorted({(start, i) for start, i, *_ in seen}) == [(s, i) for s in (0, 4, 8) for i in range(8)]
    direct = []
    labels = torch.as_tensor(class_labels(10, 4, "balanced")[4:8])
    SAMPLERS["ddpm"](_denoiser(), SeededNoise(3, range(4, 8), (3, 8, 8)), labels,
                     callback=lambda step: direct.append((step.i, step.x_t.clone(), step.x0.clone())))
    batch = [(i, x_t, x0) for start, i, x_t, x0 in seen if start == 4]
    assert [i for i, *_ in batch] == [i for i, *_ in direct]
    for (_, x_t, x0), (_, want_x_t, want_x0) in zip(batch, direct):
        assert torch.equal(x_t, want_x_t) and torch.equal(x0, want_x0)
    _run(tmp_path / "run")
    (tmp_path / "run" / "shards" / "shard_000001.npz").unlink()
    seen.clear()
    _run(tmp_path / "run", resume=True, step_callback=step_callback)
    assert {start for start, *_ in seen} == {4}


def test_resume_redoes_only_missing_shards(tmp_path):
    first = _run(tmp_path / "run")
    shards = sorted((tmp_path / "run" / "shards").iterdir())
    assert len(shards) == 3
    shards[1].unlink()
    (tmp_path / "run" / "samples.npz").unlink()
    stamp = shards[0].stat().st_mtime_ns
    again = _run(tmp_path / "run", resume=True)
    np.testing.assert_array_equal(again.images, first.images)
    assert shards[0].stat().st_mtime_ns == stamp  # the finished shard was not recomputed


def test_refuses_existing_output(tmp_path):
    _run(tmp_path / "run")
    with pytest.raises(FileExistsError, match="--resume"):
        _run(tmp_path / "run")
    with pytest.raises(ValueError, match="different settings"):
        _run(tmp_path / "run", resume=True, config={"seed": 4, "n": 10})
    _run(tmp_path / "run", overwrite=True)


def test_labels_modes():
    uniform = class_labels(1000, 10, "uniform", seed=1)
    assert uniform.min() >= 0 and uniform.max() < 10 and len(np.unique(uniform)) == 10
    np.testing.assert_array_equal(uniform, class_labels(1000, 10, "uniform", seed=1))
    assert not np.array_equal(uniform, class_labels(1000, 10, "uniform", seed=2))
    np.testing.assert_array_equal(np.bincount(class_labels(100, 10, "balanced")), np.full(10, 10))
    assert class_labels(5, None) is None
    with pytest.raises(ValueError, match="labels"):
        class_labels(5, 10, "sorted")


def test_bad_arguments():
    with pytest.raises(ValueError, match="sampler"):
        _run(sampler="lms")  # not in the registry
    with pytest.raises(ValueError, match="labels: expected 10"):
        _run(labels=np.zeros(3, dtype=np.int64))
