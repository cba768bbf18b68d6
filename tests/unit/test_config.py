"""The one config mechanism (diffguide.config) and config format version 2 of network folders, which reads version 1:
tests/fixtures/network_v1 was written by the code before version 2 (see its README) and must load and sample as then."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from diffguide import ClassifierFree, Guidance, SeededNoise, ddim, ddpm
from diffguide.api import SampleSettings
from diffguide.calibration import CalibrationConfig
from diffguide.checkpoints import CONFIG_NAME, VERSION, NetworkConfig, load_network, save_network
from diffguide.config import check_integer, check_number
from diffguide.train.config import SMALL_FIELDS, ClassifierTrainConfig, TrainConfig, config_differences

V1 = Path(__file__).resolve().parents[1] / "fixtures" / "network_v1"
LABELS = torch.tensor([0, 1, 1, 0])
RUNS = {"ddpm_cond": (ddpm, None, True), "ddim_cfg_w2": (ddim, 2.0, True), "ddim_cfg_w2_noclip": (ddim, 2.0, False)}


def _samples(folder: Path) -> dict[str, torch.Tensor]:
    """The three runs of samples.json (see the fixture's README), with the folder's own sampling defaults."""
    net, config = load_network(folder)
    out = {}
    for name, (sampler, w, clip) in RUNS.items():
        guidance = None if w is None else Guidance(cfg=ClassifierFree(w=w, null_label=config.null_label))
        denoiser = config.denoiser(net, "10", clip_x0=None if clip else False)
        out[name] = sampler(denoiser, SeededNoise(5, range(4), (2,)), LABELS, guidance=guidance).samples
    return out


def test_version_1_folder_reads_with_the_sampling_defaults_it_always_had():
    raw = json.loads((V1 / "model" / CONFIG_NAME).read_text())
    assert raw["version"] == 1 and "variance_type" not in raw
    net, config = load_network(V1 / "model")
    assert (config.variance_type, config.null_label, config.clip_x0, config.prediction_type) == \
        ("fixed_large", 2, True, "epsilon")  # learn_sigma false → fixed_large; ∅ from extra; x̂0 clipped
    assert config.extra == raw["extra"] and config.kwargs == raw["kwargs"] and config.num_train_timesteps == 100


def test_version_1_folder_samples_as_it_did_and_a_version_2_copy_samples_bit_identically(tmp_path):
    expected = json.loads((V1 / "samples.json").read_text())
    old = _samples(V1 / "model")
    for name, values in expected.items():
        # rtol: float32 (ε ≈ 6e-8) through ~10² roundings per step over 10 steps, amplified ≤ 10× by the w = 2 runs
        # that grow to |x| ≈ 10³: ≤ 1e-4 between CPUs; a wrong variance, ∅ or clipping moves samples by O(1).
        np.testing.assert_allclose(old[name].numpy(), np.array(values, dtype=np.float32), rtol=1e-4, atol=1e-5)
    net, config = load_network(V1 / "model")
    save_network(net, tmp_path / "v2", schedule=config.schedule, num_train_timesteps=config.num_train_timesteps,
                 extra=config.extra)
    saved = json.loads((tmp_path / "v2" / CONFIG_NAME).read_text())
    assert saved["version"] == VERSION == 2
    assert (saved["variance_type"], saved["null_label"], saved["clip_x0"]) == ("fixed_large", 2, True)
    again, config2 = load_network(tmp_path / "v2")
    assert config2 == config
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    new = _samples(tmp_path / "v2")
    assert all(torch.equal(old[name], new[name]) for name in RUNS)  # same process, same weights: bit-identical


def test_network_config_rejects_unknown_fields_versions_and_inconsistent_variance(tmp_path):
    shutil.copytree(V1 / "model", tmp_path / "m")
    path = tmp_path / "m" / CONFIG_NAME
    raw = json.loads(path.read_text())
    for change, pattern in (({"colour": "blue"}, r"unknown fields \['colour'\]"),
                            ({"version": 3}, "unsupported config version 3"),
                            ({"version": 2, "variance_type": "learned_range"}, "variance_type"),
                            ({"version": 2, "variance_type": "fixed_tiny"}, "variance_type: expected one of"),
                            ({"version": 2, "null_label": -1}, "null_label"),
                            ({"version": 2, "prediction_type": "v_prediction"}, "prediction_type")):
        path.write_text(json.dumps({**raw, **change}))
        with pytest.raises(ValueError, match=pattern) as err:
            load_network(tmp_path / "m")
        assert "\n" not in str(err.value)


def test_every_config_rejects_an_unknown_key_naming_it():
    for cls, data in ((TrainConfig, {"stepz": 3}), (ClassifierTrainConfig, {"optim": {"lrr": 1.0}}),
                      (CalibrationConfig, {"stepz": 3}), (SampleSettings, {"model": "m", "stepz": 3})):
        with pytest.raises(ValueError, match=r"unknown fields \['(stepz|lrr)'\]") as err:
            cls.from_dict(data)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"ClassifierTrainConfig\.optim: unknown fields"):
        ClassifierTrainConfig.from_dict({"optim": {"lrr": 1.0}})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), True, "1", None])
def test_the_one_finite_number_check(value):
    with pytest.raises(ValueError, match=r"^w: expected a finite number, got "):
        check_number("w", value)


def test_number_bounds_and_integers():
    assert check_number("x", 0, low=0) == 0 and check_number("x", 1.0, low=0, low_open=True, high=1) == 1.0
    for kwargs, value, words in (({"low": 0, "low_open": True}, 0, "> 0"), ({"high": 1}, 1.5, "≤ 1"),
                                 ({"low": 0, "high": 1, "high_open": True}, 1, "≥ 0 and < 1")):
        with pytest.raises(ValueError, match=f"expected a finite number {words}, got {value!r}"):
            check_number("x", value, **kwargs)
    assert check_integer("n", 0, minimum=0) == 0
    for value in (True, 1.0, -1):
        with pytest.raises(ValueError, match="n: expected an integer ≥ 0"):
            check_integer("n", value, minimum=0)
    # the same check everywhere: guidance, calibration, sampling settings, run configs
    for build in (lambda: ClassifierFree(w=float("nan")), lambda: CalibrationConfig(lr=float("inf")),
                  lambda: SampleSettings(model="m", classifier_scale=float("nan")),
                  lambda: TrainConfig.from_dict({"optim": {"lr": float("nan")}})):
        with pytest.raises(ValueError, match="expected a finite number"):
            build()


def test_train_config_of_version_1_reads_and_a_release_records_its_own_architecture_only():
    saved = json.loads((V1 / "model" / "train_config.json").read_text())
    assert {"adm_kwargs", *SMALL_FIELDS} <= set(saved["net"])  # version 1 wrote both architectures' fields
    config = TrainConfig.from_dict(saved)
    net = config.to_dict()["net"]
    assert net["arch"] == "adm_unet" and "adm_kwargs" in net and not set(SMALL_FIELDS) & set(net)
    assert config_differences(saved, config) == {}  # an old checkpoint still resumes: compared by meaning
    assert TrainConfig.from_dict(config.to_dict()) == config
    small = TrainConfig().to_dict()["net"]
    assert "adm_kwargs" not in small and set(SMALL_FIELDS) <= set(small)
    assert "class_conditional" not in ClassifierTrainConfig().to_dict()["net"]


def test_the_one_resume_check_names_what_differs():
    saved = TrainConfig.from_dict({"steps": 10, "optim": {"lr": 1e-3}}).to_dict()
    TrainConfig.from_dict({"steps": 20, "optim": {"lr": 1e-3}}).check_resumable(saved, where="run")  # steps may
    with pytest.raises(ValueError, match=r"resume: run was written with different settings \(optim\.lr differs: "
                                         r"0\.001 then, 0\.002 now\); only steps, log_every"):
        TrainConfig.from_dict({"optim": {"lr": 2e-3}}).check_resumable(saved, where="run")
    calibration = CalibrationConfig(steps=5).to_dict()
    CalibrationConfig(steps=50, checkpoint_every=7).check_resumable(calibration, where="c")
    with pytest.raises(ValueError, match="ece_weight differs: 0.1 then, 0.5 now"):
        CalibrationConfig(ece_weight=0.5).check_resumable(calibration, where="c")


def test_sampling_variance_defaults_to_the_checkpoints_and_can_be_overridden(tmp_path):
    """api.sample takes the checkpoint's variance_type unless ``variance`` is given; run.json records the resolved one.
    Same seed and weights: fixed_small and fixed_large DDPM runs differ (every stochastic step's σ differs)."""
    from diffguide.api import sample
    from diffguide.nets.small_unet import SmallUNet

    torch.manual_seed(0)
    net = SmallUNet(num_classes=4, image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                    attention_resolutions=())
    model = save_network(net, tmp_path / "model", schedule="linear")
    run = dict(model=str(model), num_samples=2, batch_size=2, sampler="ddpm", steps="4", progress=False)
    default = sample(**run, out=tmp_path / "default")
    large = sample(**run, variance="fixed_large")
    small = sample(**run, out=tmp_path / "small", variance="fixed_small")
    assert (default.images == large.images).all() and not (small.images == large.images).all()
    for name, expected in (("default", "fixed_large"), ("small", "fixed_small")):
        assert json.loads((tmp_path / name / "run.json").read_text())["variance"] == expected
