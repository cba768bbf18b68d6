"""The training loop on tiny in-memory images: schedules, EMA, batching, exact resume, atomic checkpoints, config
checks, the released model, unconditional and classifier training, and the CLI's bad-input errors."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from diffguide import ClassifierFree, Guidance, SeededNoise, ddim
from diffguide.checkpoints import load_network
from diffguide.cli import main
from diffguide.nets.small_unet import SmallUNet
from diffguide.train import (ClassifierTrainConfig, DataConfig, LossConfig, NetConfig, OptimConfig, TrainConfig,
                             ema_decay_at, ema_update, learning_rate, load_training_checkpoint, train, train_classifier)
from diffguide.train.loop import CHECKPOINT, LOG, StepBatches, step_generator

TINY_NET = dict(model_channels=32, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[])


def tiny_images(n=48, size=8, channels=3, classes=3, seed=0):
    """Class k images have mean brightness (k + 0.5)/classes plus noise: learnable from the pixels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    base = (labels[:, None, None, None] + 0.5) / classes * 255
    images = np.clip(base + rng.normal(0, 25, (n, size, size, channels)), 0, 255).astype(np.uint8)
    return SimpleNamespace(images=images, labels=labels.astype(np.int64), class_names=[f"c{k}" for k in range(classes)])


def tiny_config(steps=6, **loss):
    return TrainConfig(net=NetConfig(**TINY_NET, dropout=0.1),
                       optim=OptimConfig(batch_size=8, lr=1e-3, warmup_steps=3, ema_decay=0.9),
                       loss=LossConfig(**{"kind": "aligned", "w_range": [0.5, 2.0], "stop_grad_null": True, **loss}),
                       steps=steps, log_every=2, checkpoint_every=3, sample_steps=4, samples_per_class=2)


def test_learning_rate_warmup_and_ema_decay():
    optim = OptimConfig(lr=1e-3, warmup_steps=4, ema_decay=0.999)
    assert [learning_rate(k, optim) for k in (0, 1, 3, 10)] == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-3])
    assert learning_rate(0, OptimConfig(lr=1e-3, warmup_steps=0)) == 1e-3
    assert ema_decay_at(0, optim) == pytest.approx(0.1) and ema_decay_at(10_000, optim) == 0.999
    assert ema_decay_at(0, OptimConfig(ema_decay=0.5, ema_warmup=False)) == 0.5


def test_ema_update_is_the_weighted_average():
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in ema.parameters()]
    ema_update(ema, model, 0.75)
    for p_ema, p_old, p in zip(ema.parameters(), before, model.parameters()):
        torch.testing.assert_close(p_ema, 0.75 * p_old + 0.25 * p.detach())


def test_batches_cover_every_epoch_and_split_over_ranks():
    data = tiny_images(n=20)
    whole = StepBatches(data.images, data.labels, 4, seed=3)
    assert whole.per_epoch == 5
    seen = torch.cat([whole.order(0)[k * 4:(k + 1) * 4] for k in range(5)])
    assert sorted(seen.tolist()) == list(range(20))
    assert not torch.equal(whole.order(0), whole.order(1))
    x, y = whole.batch(7)  # epoch 1, batch 2
    picked = whole.order(1)[8:12]
    torch.testing.assert_close(x, torch.from_numpy(data.images[picked.numpy()]).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert torch.equal(y, torch.from_numpy(data.labels[picked.numpy()]))
    halves = [StepBatches(data.images, data.labels, 4, seed=3, rank=r, world=2).batch(7)[0] for r in (0, 1)]
    torch.testing.assert_close(torch.cat(halves), x)
    with pytest.raises(ValueError, match="divide evenly"):
        StepBatches(data.images, data.labels, 5, seed=0, world=2)
    with pytest.raises(ValueError, match="larger than the data set"):
        StepBatches(data.images, data.labels, 64, seed=0)


def test_hflip_mirrors_the_images_drawn_by_the_step_generator():
    data = tiny_images(n=16)
    plain = StepBatches(data.images, data.labels, 16, seed=0).batch(0)[0]
    flipped = StepBatches(data.images, data.labels, 16, seed=0, hflip=True).batch(0, step_generator(0, 0, 0))[0]
    chosen = torch.rand(16, generator=step_generator(0, 0, 0)) < 0.5
    assert 0 < chosen.sum() < 16
    torch.testing.assert_close(flipped[chosen], plain[chosen].flip(3))
    torch.testing.assert_close(flipped[~chosen], plain[~chosen])


def _identical(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b))
    return a == b


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    data = tiny_images()
    train(tiny_config(6), tmp_path / "once", dataset=data, progress=False)
    train(tiny_config(3), tmp_path / "twice", dataset=data, progress=False)
    summary = train(tiny_config(6), tmp_path / "twice", dataset=data, progress=False)
    assert summary["steps"] == 6
    once, twice = (load_training_checkpoint(tmp_path / run / CHECKPOINT) for run in ("once", "twice"))
    for key in ("model", "ema", "optimizer", "rng", "step"):
        assert _identical(once[key], twice[key]), key

    def losses(run):
        records = map(json.loads, (tmp_path / run / LOG).read_text().splitlines())
        return {r["step"]: (r["loss"], r["w_train"], r["grad_norm"]) for r in records}

    once, twice = losses("once"), losses("twice")  # the stopped run also logged its last, partial interval (step 3)
    assert sorted(once) == [2, 4, 6] and sorted(twice) == [2, 3, 4, 6]
    assert once[2] == twice[2] and once[6] == twice[6]


def test_resume_refuses_a_different_config_but_may_run_longer(tmp_path):
    data = tiny_images()
    train(tiny_config(3), tmp_path, dataset=data, progress=False)
    with pytest.raises(ValueError, match=r"loss.w_train differs: 1.0 then, 3.0 now"):
        train(tiny_config(6, w_train=3.0), tmp_path, dataset=data, progress=False)
    assert TrainConfig.from_json((tmp_path / "train_config.json").read_text()) == tiny_config(3)
    with pytest.raises(ValueError, match="optim.lr"):
        config = tiny_config(6)
        config.optim.lr = 5e-4
        train(config, tmp_path, dataset=data, progress=False)
    assert train(tiny_config(4), tmp_path, dataset=data, progress=False)["steps"] == 4


def test_time_limit_stops_cleanly_and_the_run_continues(tmp_path):
    data = tiny_images()
    summary = train(tiny_config(50), tmp_path, dataset=data, progress=False, time_limit_s=1e-9)
    assert summary["stopped_early"] and summary["steps"] == 1
    assert load_training_checkpoint(tmp_path / CHECKPOINT)["step"] == 1
    assert (tmp_path / "model" / "config.json").is_file() and (tmp_path / "samples.png").is_file()
    summary = train(tiny_config(3), tmp_path, dataset=data, progress=False)
    assert summary["steps"] == 3 and not summary["stopped_early"]


def test_a_killed_checkpoint_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    data = tiny_images()
    train(tiny_config(3), tmp_path, dataset=data, progress=False)
    before = (tmp_path / CHECKPOINT).read_bytes()
    real_save = torch.save

    def killed(obj, path, *args, **kwargs):  # half a file, then the process "dies"
        real_save(obj, path, *args, **kwargs)
        with open(path, "r+b") as f:
            f.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(6), tmp_path, dataset=data, progress=False)
    assert (tmp_path / CHECKPOINT).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []
    monkeypatch.setattr(torch, "save", real_save)
    assert load_training_checkpoint(tmp_path / CHECKPOINT)["step"] == 3
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable training checkpoint"):
        load_training_checkpoint(tmp_path / "bad.pt")


def test_released_model_loads_back_and_samples_with_cfg(tmp_path):
    data = tiny_images()
    summary = train(tiny_config(3), tmp_path, dataset=data, progress=False)
    net, config = load_network(summary["release"])
    assert isinstance(net, SmallUNet) and config.kind == "SmallUNet" and config.schedule == "linear"
    assert config.extra["null_label"] == 3 and config.extra["weights"] == "ema"
    ema = load_training_checkpoint(tmp_path / CHECKPOINT)["ema"]
    assert all(torch.equal(net.state_dict()[k], ema[k]) for k in ema)
    assert TrainConfig.from_json((tmp_path / "model" / "train_config.json").read_text()) == tiny_config(3)
    labels = torch.tensor([0, 1, 2, 1])
    out = ddim(config.denoiser(net, "5"), SeededNoise(0, range(4), (3, 8, 8)), labels,
               guidance=Guidance(cfg=ClassifierFree(w=1.0, null_label=config.extra["null_label"]))).samples
    assert out.shape == (4, 3, 8, 8) and torch.isfinite(out).all()
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "loss.png").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 3


def test_unconditional_training(tmp_path):
    data = tiny_images()
    config = TrainConfig(net=NetConfig(**TINY_NET, class_conditional=False), optim=OptimConfig(batch_size=8),
                         steps=2, log_every=1, sample_steps=3)
    summary = train(config, tmp_path, dataset=SimpleNamespace(images=data.images, labels=None), progress=False)
    net, saved = load_network(summary["release"])
    assert net.num_classes is None and saved.extra["null_label"] is None
    with pytest.raises(ValueError, match="no labels"):
        train(TrainConfig(net=NetConfig(**TINY_NET), optim=OptimConfig(batch_size=8), steps=1), tmp_path / "c",
              dataset=SimpleNamespace(images=data.images, labels=None), progress=False)


def test_fine_tuning_starts_from_released_weights_and_adm_sizes_train(tmp_path):
    data = tiny_images()
    standard = train(tiny_config(2, kind="standard", w_range=None, stop_grad_null=False), tmp_path / "standard",
                     dataset=data, progress=False)
    config = tiny_config(0)
    config.init_from = standard["release"]
    tuned = train(config, tmp_path / "tuned", dataset=data, progress=False)
    source, start = load_network(standard["release"])[0], load_network(tuned["release"])[0]
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), start.state_dict().values()))
    adm = dict(model_channels=64, num_res_blocks=1, attention_resolutions=[2], channel_mult=[1, 2], num_heads=2,
               num_head_channels=-1, out_channels=3, use_fp16=False)
    config = TrainConfig(net=NetConfig(arch="adm_unet", adm_kwargs=adm), optim=OptimConfig(batch_size=8), steps=1,
                         sample_steps=2, samples_per_class=1)
    net, saved = load_network(train(config, tmp_path / "adm", dataset=data, progress=False)["release"])
    assert saved.kind == "SmallUNet" and net.null_label == 3 and net.config["num_heads"] == 2
    with pytest.raises(ValueError, match="out_channels"):
        train(TrainConfig(net=NetConfig(arch="adm_unet", adm_kwargs={**adm, "out_channels": 6}), steps=1,
                          optim=OptimConfig(batch_size=8)), tmp_path / "bad", dataset=data, progress=False)


def test_noise_aware_classifier_learns_at_low_noise_and_reports_per_noise_level(tmp_path):
    data = tiny_images(n=96)
    config = ClassifierTrainConfig(net=NetConfig(arch="small_classifier", **TINY_NET),
                                   optim=OptimConfig(batch_size=24, lr=3e-3, warmup_steps=5, ema_decay=0.0),
                                   steps=150, log_every=10, ece_weight=0.1, eval_timesteps=[0, 999])
    summary = train_classifier(config, tmp_path, dataset=data, eval_dataset=tiny_images(n=60, seed=1), progress=False)
    rows = {row["t"]: row for row in summary["report"]["ece_t"]}
    # Brightness classes are obvious in clean images. t is drawn from U{0..999}, so few batches teach the low-noise end:
    # at 40 steps the clean accuracy depended on the seed (1.0, 0.85, 1.0, 0.72 at seeds 0-3, and 0.82 at seed 0 on an
    # AVX-512 CPU); at 150 steps it was 1.0 at each of seeds 0-7 — a CPU's rounding is a smaller perturbation than a seed.
    assert rows[0]["accuracy"] > 0.9
    # Under pure noise only chance is left (1/3; seeds 0-7 gave 0.32-0.40): 0.6 is 4.4 binomial standard deviations
    # (sqrt(p(1-p)/60) = 0.061) above chance, so a classifier that had not lost its signal would fail.
    assert rows[999]["accuracy"] < 0.6
    assert 0 <= rows[0]["ece"] <= 1 and rows[0]["n"] == 60
    records = [json.loads(line) for line in (tmp_path / LOG).read_text().splitlines()]
    assert {"cross_entropy", "ece_loss", "accuracy"} <= set(records[0])
    assert load_network(summary["release"])[1].kind == "EncoderUNetModel"


def _npz(tmp_path, data):
    path = tmp_path / "tiny.npz"
    np.savez(path, arr_0=data.images, arr_1=data.labels)
    return path


def test_cli_trains_and_reports(tmp_path):
    path = _npz(tmp_path, tiny_images())
    result = CliRunner().invoke(main, ["train", "--data", str(path), "--split", "none", "--out", str(tmp_path / "run"),
                                       "--preset", "tiny", "--steps", "2", "--batch-size", "8", "--loss", "aligned",
                                       "--w-train", "1.5", "--sample-steps", "3", "--samples-per-class", "1",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "first loss" in result.output
    saved = TrainConfig.from_json((tmp_path / "run" / "train_config.json").read_text())
    assert saved.loss.kind == "aligned" and saved.loss.w_train == 1.5 and saved.net.model_channels == 32


@pytest.mark.parametrize("flags,message", [
    (["--p-uncond", "1.5"], "p_uncond"), (["--w-train", "-1"], "w_train"), (["--loss", "aligned", "--p-uncond", "0"],
                                                                            "p_uncond"),
    (["--w-range", "2", "1"], "w_range"), (["--batch-size", "100"], "larger than the data set"),
])
def test_cli_bad_input_gives_clear_errors(tmp_path, flags, message):
    path = _npz(tmp_path, tiny_images())
    result = CliRunner().invoke(main, ["train", "--data", str(path), "--split", "none", "--out", str(tmp_path / "run"),
                                       "--preset", "tiny", "--steps", "1", "--no-progress", *flags])
    assert result.exit_code != 0 and message in result.output


def test_cli_missing_data_error_comes_from_the_loader(tmp_path):
    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")])
    assert result.exit_code != 0 and "does not exist" in result.output


def test_the_ema_shares_the_training_layout_on_the_fast_path(tmp_path, monkeypatch):
    """On the fast path with channels-last on, the network trains in channels-last memory. The EMA copy must have the
    same strides, or
    torch._foreach_lerp_ leaves its multi-tensor path for one kernel per tensor (277 a step in the CIFAR training
    profile). torch.compile is a stand-in here: what is tested is the layout."""
    import diffguide.train.trainer as trainer

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)
    monkeypatch.setenv("DIFFGUIDE_CHANNELS_LAST", "1")
    same, original = [], trainer.ema_update

    def record(ema, model, decay):
        pairs = list(zip(ema.parameters(), model.parameters()))
        same.append(all(e.stride() == m.stride() for e, m in pairs))
        assert any(m.is_contiguous(memory_format=torch.channels_last) and not m.is_contiguous() for _, m in pairs)
        original(ema, model, decay)

    monkeypatch.setattr(trainer, "ema_update", record)
    train(tiny_config(2), tmp_path, dataset=tiny_images(), progress=False, fast=True, device="cpu")
    assert same == [True, True]
