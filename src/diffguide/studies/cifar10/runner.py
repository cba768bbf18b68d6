"""Run a CIFAR-10 study's plan unit by unit within a time budget; resumable across commands.

A sampling unit is finished when its metrics JSON is in the results folder (the repo's docs/results/<study>/);
a reference / training unit when its output is in the cache (default ~/.cache/diffguide-studies/<study>, never in
the repo). Missing cache outputs are re-created from the plan's fixed seeds. Scales marked "chosen" are read from
the seed-0 grid JSONs only (:func:`chosen_scale`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import math
import platform
import time
from pathlib import Path

import torch

from ... import accel
from ...io import atomic_write_text
from ...nets import adm
from .plan import (FIRST_COMPILE_S, TRAINING_KINDS, TrainingSetting, Unit, attention_qkv_contiguous,
                   sampling_variance)
from .provenance import used_weights, write_training_record

DEFAULT_CACHE = Path.home() / ".cache" / "diffguide-studies"
GRID_GROUPS = ("grid", "wcurve")
RESULT_KINDS = ("sample", "calibration", "gradnorm", "sample_grid")  # finished when their JSON is in the results
STARTUP_MARGIN_S = 150.0  # a training command's compile, data load and release on top of its time_limit_s


@dataclasses.dataclass
class Study:
    """A plan (``units`` in run order, ``methods`` specs) with the assets it runs on. ``assets`` keys: model,
    data (path or an ImageDataset), inception, judge, guides {name: (on, spec)}, train_config (dict), batch_size,
    bf16, classifier_net (dict or None), device, num_features. ``training_setting``: how its training units compute
    (:func:`computed_as`)."""

    name: str
    units: list
    methods: dict
    assets: dict
    tiny: bool = False
    training_setting: TrainingSetting = TrainingSetting()

    def unit(self, uid: str) -> Unit:
        return next(u for u in self.units if u.id == uid)

    def dependents(self, uid: str) -> list:
        """The units that need unit ``uid``, in plan order."""
        return [u for u in self.units if uid in u.needs]


def result_path(results_dir, unit: Unit) -> Path:
    return Path(results_dir) / f"{unit.id}.json"


def load_results(results_dir) -> dict[str, dict]:
    """{unit id: metrics JSON} of every finished sampling unit in ``results_dir``."""
    folder = Path(results_dir)
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def trajectory_path(cache: Path, unit_id: str) -> Path:
    return cache / "trajectories" / f"{unit_id}.npz"


def cache_done(cache: Path, unit: Unit) -> bool:
    if unit.kind == "reference":
        return (cache / "reference.npz").is_file()
    if unit.kind == "trajectories":
        return trajectory_path(cache, unit.id).is_file()
    return (cache / "train" / unit.id / "done.json").is_file()


def is_done(study: Study, unit: Unit, cache: Path, results: dict) -> bool:
    return unit.id in results if unit.kind in RESULT_KINDS else cache_done(cache, unit)


def needed(study: Study, unit: Unit, results: dict) -> bool | None:
    """Whether a seed-0 grid point beyond the fixed grid (``params['extension']``) is asked for by the edge rule
    (:func:`grid_scales`), or a claimed method's seed 4–6 run by the borderline rule
    (:func:`.claims.more_seeds_needed`): True, False once decided without it, None while undecided. Every other unit:
    True."""
    if unit.kind == "sample" and unit.params.get("group") == "moreseeds":
        from .claims import more_seeds_needed

        return more_seeds_needed(study, unit, results)
    if unit.kind != "sample" or not unit.params.get("extension"):
        return True
    scales, settled = grid_scales(study, unit.params["method"], results)
    return True if unit.params["scale"] in scales else (False if settled else None)


def waiting(study: Study, unit: Unit, results: dict) -> bool:
    """Whether ``unit`` waits for seed-0 grid results (a scale still to be chosen, or an edge point undecided)."""
    if needed(study, unit, results) is None:
        return True
    if unit.kind in ("sample", "sample_grid"):
        return resolve(study, unit, results) is None
    if unit.kind == "gradnorm":
        return any(chosen_scale(study, m, results) is None for m in unit.params["methods"])
    return False


def _fid(record: dict) -> float:
    value = record.get("metrics", {}).get("fid")
    return math.inf if record.get("failed") or value is None or not math.isfinite(value) else float(value)


def _grid_points(study: Study, method: str) -> dict:
    """{scale: unit} of ``method``'s seed-0 grid units: its fixed grid's points and the possible edge extensions."""
    grid = study.methods[method]["grid"]
    return {u.params["scale"]: u for u in study.units if u.kind == "sample" and u.params["group"] in GRID_GROUPS
            and u.params["method"] == method and u.params["seed"] == 0
            and (u.params["scale"] in grid or u.params.get("extension"))}


def grid_scales(study: Study, method: str, results: dict) -> tuple[list, bool]:
    """(the scales of ``method``'s seed-0 grid so far, whether it is settled). The edge rule: start from the fixed
    grid; while every point has run and the lowest FID (ties: the smaller scale) is at the lowest (highest) point,
    add the next extension point below (above), as long as the plan has one. Unsettled while a point is missing."""
    points = _grid_points(study, method)
    below = sorted((s for s, u in points.items() if u.params.get("extension", 0) < 0), reverse=True)
    above = sorted(s for s, u in points.items() if u.params.get("extension", 0) > 0)
    scales = sorted(s for s, u in points.items() if not u.params.get("extension"))
    while True:
        if not scales or any(points[s].id not in results for s in scales):
            return scales, False
        best = min(scales, key=lambda s: (_fid(results[points[s].id]), s))
        if best == scales[0] and below:
            scales.insert(0, below.pop(0))
        elif best == scales[-1] and above:
            scales.append(above.pop(0))
        else:
            return scales, True


def chosen_scale(study: Study, method: str, results: dict):
    """The scale of ``method``'s settled seed-0 grid (:func:`grid_scales`) with the lowest FID (failed runs score
    +inf; ties: the smaller scale), or None while the grid is not settled. Reads only the seed-0 grid JSONs."""
    scales, settled = grid_scales(study, method, results)
    if not settled:
        return None
    points = _grid_points(study, method)
    return min(scales, key=lambda s: (_fid(results[points[s].id]), s))


def best_guided_method(study: Study, results: dict):
    """The classifier-guidance method with the lowest seed-0 grid FID (at its chosen scale), or None if unknown."""
    scores = {}
    for name, spec in study.methods.items():
        if spec.get("guide") is None or spec.get("combine"):
            continue
        scale = chosen_scale(study, name, results)
        if scale is None:
            return None
        unit = next(u for u in study.units if u.params.get("method") == name and u.params.get("seed") == 0
                    and u.params.get("group") in GRID_GROUPS and u.params.get("scale") == scale)
        scores[name] = _fid(results[unit.id])
    return min(scores, key=lambda n: (scores[n], n)) if scores else None


def resolve(study: Study, unit: Unit, results: dict):
    """(spec, scale, extra settings) of a sampling unit, or None while it waits for seed-0 grid results."""
    spec = study.methods[unit.params["method"]]
    extra = {}
    if spec.get("combine"):
        base, cfg_w = best_guided_method(study, results), chosen_scale(study, "cfg", results)
        if base is None or cfg_w is None:
            return None
        extra = {"cfg_w": cfg_w, "combined_with": base}
        spec = {**study.methods[base], "scale_field": "classifier_scale"}
    scale = unit.params["scale"]
    if scale is None:
        scale = chosen_scale(study, unit.params["method"], results)
        if scale is None:
            return None
    return spec, scale, extra


def guide_source(study: Study, guide: str, cache: Path) -> tuple[str, str]:
    """('x0' or 'x_t', the spec to load) of a guiding classifier: a noise-aware one trained by the study (``clf_*``,
    its release folder in the cache) or one of the assets' guides."""
    if guide.startswith("clf_"):
        return "x_t", str(cache / "train" / guide / "model")
    return study.assets["guides"][guide]


def build_settings(study: Study, unit: Unit, spec: dict, scale, extra: dict, cache: Path):
    from ...api import SampleSettings

    a, p = study.assets, unit.params
    model = str(cache / "train" / spec["arm"] / "model") if spec.get("arm") else a["model"]
    fields = {"model": model, "num_samples": p["num_samples"], "batch_size": a["batch_size"], "seed": p["seed"],
              "labels": "uniform", "sampler": p["sampler"], "steps": str(p["steps"]), "bf16": a["bf16"],
              "on_nonfinite": "zero", "variance": sampling_variance(p["sampler"])}
    guide = spec.get("guide")
    if guide is not None:
        on, path = guide_source(study, guide, cache)
        fields["x0_classifier" if on == "x0" else "classifier"] = path
        if on == "x0":
            fields["softplus_beta"] = spec["softplus_beta"]
        rule = spec.get("rule", "score")
        fields.update(objective=spec.get("objective"), objective_params=dict(spec.get("objective_params", {})),
                      schedule=spec.get("schedule", "constant"), schedule_params=dict(spec.get("schedule_params", {})),
                      guidance_rule=rule if p["sampler"] == "ddpm" or rule != "elucd" else "score")
    if spec["scale_field"] == "cfg_w":
        fields["cfg_w"] = None if unit.params["method"] == "none" else float(scale)
    else:
        fields["classifier_scale"] = float(scale)
    if "cfg_w" in extra:
        fields["cfg_w"] = float(extra["cfg_w"])
    return SampleSettings(**fields)


def environment(study: Study) -> dict:
    cuda = torch.cuda.is_available() and str(study.assets.get("device") or "cuda").startswith("cuda")
    return {"gpu": torch.cuda.get_device_name() if cuda else f"none (CPU: {platform.processor() or 'unknown'})",
            "torch": torch.__version__, "precision": "bf16 autocast" if study.assets["bf16"] else "fp32",
            **TrainingSetting(adm.QKV_CONTIGUOUS, accel.channels_last_enabled()).record(), "tiny": study.tiny}


MACHINE_ERRORS = (torch.OutOfMemoryError, torch._dynamo.exc.TorchDynamoException,
                  *((torch.AcceleratorError,) if hasattr(torch, "AcceleratorError") else ()))
"""Errors of a sampling run that say nothing about its method (out of memory, a compiler failure, a device fault):
they are RuntimeErrors, but unlike a diverged run they are raised, never recorded as the method's failure."""


def run_sample(study: Study, unit: Unit, cache: Path, results_dir: Path, results: dict) -> dict:
    """Sample a unit, then score it (:func:`.scoring.score`): Inception features, FID/KID/PRDC on the study's
    device, the judge's (and an off-the-shelf guide's) accuracy. The record's ``timing`` gives each stage's seconds;
    loading the scoring networks counts in the first unit of a process only (:func:`diffguide.accel.kept`)."""
    from ...api import sample
    from .scoring import score

    spec, scale, extra = resolve(study, unit, results)
    settings = build_settings(study, unit, spec, scale, extra, cache)
    device = study.assets.get("device")
    start = time.perf_counter()
    record = {"unit": unit.id, **unit.params, "scale": scale, **extra, "settings": dataclasses.asdict(settings),
              **environment(study), "weights": used_weights(study, unit, cache), "failed": False}
    try:
        samples = sample(settings, out=cache / "samples" / unit.id, resume=True, device=device, progress=False)
    except MACHINE_ERRORS:  # the machine's or the compiler's failure, not the method's: no JSON, the unit stays unrun
        raise
    except (RuntimeError, FloatingPointError, ValueError) as error:  # a diverged run is a failure of the method
        record.update(failed=True, error=f"{type(error).__name__}: {error}"[:500])
        samples = None
    sampling_s = time.perf_counter() - start
    record.update(sampling_seconds=sampling_s, seconds_per_1k_samples=1000 * sampling_s / unit.params["num_samples"])
    record["timing"] = {"sampling_s": sampling_s}
    if samples is not None:
        record["nonfinite_zeroed"] = int(samples.nonfinite_zeroed)
        record["diverged_share"] = samples.nonfinite_zeroed / len(samples.images)
        on, path = guide_source(study, spec["guide"], cache) if spec.get("guide") is not None else (None, None)
        scored = score(study, cache, device, samples.images, samples.labels, seed=unit.params["seed"],
                       guide=None if path is None else path if on == "x0" else f"noise-aware:{path}")
        record.update(scored, timing={**record["timing"], **scored["timing"]})
    record["seconds"] = time.perf_counter() - start
    atomic_write_text(result_path(results_dir, unit), json.dumps(record, indent=2, default=str) + "\n")
    return record


def run_reference(study: Study, cache: Path) -> None:
    from ...data import load_dataset
    from ...metrics import InceptionFeatures, compute_reference

    data = study.assets["data"]
    dataset = load_dataset(data, "train") if isinstance(data, (str, Path)) else data
    extractor = InceptionFeatures(study.assets["inception"], device=study.assets.get("device"))
    reference = compute_reference(dataset.images, extractor, source=str(getattr(dataset, "source", data)),
                                  num_features=min(study.assets.get("num_features", 10_000), len(dataset.images)),
                                  resume_file=cache / "reference_features.partial.npz")
    reference.save(cache / "reference.npz")


def trained_seconds(out: Path) -> float:
    """Training seconds a run in ``out`` has logged so far (its log's last ``train_seconds``; 0 if none). The trainer's
    time limit counts all of a run's training, resumes included; a command that resumes gives it this much on top."""
    log = Path(out) / "log.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return float(json.loads(lines[-1]).get("train_seconds", 0.0)) if lines else 0.0


def run_training(study: Study, unit: Unit, cache: Path, time_limit_s: float) -> bool:
    """One command's share (``time_limit_s`` more seconds) of a training unit (the trainer resumes from its
    checkpoint); True when finished."""
    from ...train import ClassifierTrainConfig, TrainConfig, train, train_classifier

    a, p, out = study.assets, unit.params, cache / "train" / unit.id
    time_limit_s = trained_seconds(out) + time_limit_s
    data = a["data"]
    dataset = None if isinstance(data, (str, Path)) else data
    source = str(data) if dataset is None else "in-memory"
    if unit.kind == "train":
        base = json.loads(json.dumps(a["train_config"]))
        base["loss"] = {**base.get("loss", {}), **p["loss"]}
        base.update(steps=p["steps"], seed=p["seed"], data={**base["data"], "source": source, "split": "train"},
                    init_from=str(cache / "train" / p["init_from"] / "model") if p.get("init_from") else None)
        base["optim"]["batch_size"] = a.get("train_batch") or p["batch_size"]
        summary = train(TrainConfig.from_dict(base), out, dataset=dataset, device=a.get("device"), progress=False,
                        time_limit_s=time_limit_s)
    else:
        config = {"data": {"source": source, "split": "train"}, "steps": p["steps"], "seed": p["seed"],
                  "ece_weight": p["ece_weight"], "eval_timesteps": p["eval_timesteps"]}
        if a.get("classifier_net"):
            config["net"] = a["classifier_net"]
        config = ClassifierTrainConfig.from_dict(config)
        config.optim.batch_size = a.get("train_batch") or p["batch_size"]
        summary = train_classifier(config, out, dataset=dataset, eval_dataset=a.get("eval_dataset"),
                                   device=a.get("device"), progress=False, time_limit_s=time_limit_s)
    if summary["stopped_early"]:
        return False
    atomic_write_text(out / "done.json", json.dumps({"steps": summary["steps"], "unit": unit.id}) + "\n")
    return True


def run_calibration_finetune(study: Study, unit: Unit, cache: Path) -> None:
    """A ``calibrate`` unit: the noise-aware classifier ``params['init_from']`` fine-tuned as ``diffguide calibrate``
    fine-tunes it (:func:`diffguide.train.calibrate.finetune_calibration`, x_t with t ~ U{0..T−1}), its report
    (before/after on the test split) and release ``model/`` written to the unit's cache folder. Minutes at most on
    a GPU, so one command runs it whole (its checkpoints still resume a killed run)."""
    from ...calibration import EpochBatches
    from ...classifiers import load_architecture, noise_settings
    from ...data import load_dataset, to_model_range
    from ...devices import resolve_device
    from ...train.calibrate import CalibrationConfig, finetune_calibration

    a, p, out = study.assets, unit.params, cache / "train" / unit.id
    base = cache / "train" / p["init_from"] / "model"
    config = CalibrationConfig(steps=p["steps"], lr=p["lr"], weight_decay=p["weight_decay"], ece_weight=p["ece_weight"],
                               seed=p["seed"], eval_timesteps=list(p["eval_timesteps"]), noise_aware=True,
                               **noise_settings(base))
    model = load_architecture(str(base)).to(resolve_device(a.get("device"))).requires_grad_(True)
    data = a["data"]
    train_set = load_dataset(data, "train") if isinstance(data, (str, Path)) else data
    test_set = a.get("eval_dataset") or load_dataset(data, "test")
    batch = a.get("train_batch") or p["batch_size"]
    finetune_calibration(model, EpochBatches(train_set.images, train_set.labels, batch, seed=p["seed"],
                                             convert=to_model_range),
                         EpochBatches(test_set.images, test_set.labels, 500, shuffle=False, convert=to_model_range),
                         config, out_dir=out, progress=False)
    atomic_write_text(out / "done.json", json.dumps({"steps": p["steps"], "unit": unit.id}) + "\n")


RESUMABLE_KINDS = ("train", "train_classifier")
"""Units that resume from their own checkpoint, so they may start with less budget than their estimate."""
RECREATED_KINDS = ("reference", "trajectories")
"""Cache units re-made from fixed seeds on each machine that needs them (under a minute), never brought back."""
DIAGNOSTIC_KINDS = ("trajectories", "calibration", "gradnorm", "sample_grid")


def _run_diagnostic(study: Study, unit: Unit, cache: Path, results_dir: Path, results: dict) -> None:
    from . import calibration, probes

    run = {"trajectories": probes.run_trajectories, "calibration": calibration.run_calibration,
           "gradnorm": probes.run_gradnorm, "sample_grid": probes.run_sample_grid}[unit.kind]
    run(study, unit, cache, results_dir, results)


def unit_records(study: Study, results: dict, **match) -> list[tuple]:
    """(unit, metrics JSON) of the finished sampling units whose plan parameters match ``match`` (scale=None: the
    units planned at the chosen scale), in plan order."""
    return [(u, results[u.id]) for u in study.units if u.kind == "sample" and u.id in results
            and all(u.params.get(k) == v for k, v in match.items())]


def runs(study: Study, results: dict, **match) -> list[dict]:
    """The finished runs whose plan parameters match ``match`` (scale=None: the unit planned at the chosen scale)."""
    return sorted((r for _, r in unit_records(study, results, **match)), key=lambda r: r["seed"])


def unit_state(study: Study, unit: Unit, cache: Path, results: dict) -> str:
    """'done'; 'not needed' (an edge point of a grid settled without it, or a cache unit — weights, the reference,
    trajectories — that no unit left to run needs: a fresh machine does not re-create it); 'blocked' (a unit it
    needs is unfinished); 'waiting' (for seed-0 grid results); or 'ready'."""
    if is_done(study, unit, cache, results):
        return "done"
    if needed(study, unit, results) is False:
        return "not needed"
    if unit.kind not in RESULT_KINDS and not any(
            unit_state(study, u, cache, results) not in ("done", "not needed") for u in study.dependents(unit.id)):
        return "not needed"
    if any(not is_done(study, study.unit(n), cache, results) for n in unit.needs):
        return "blocked"
    return "waiting" if waiting(study, unit, results) else "ready"


def status(study: Study, cache_dir, results_dir) -> dict:
    """{'done', 'ready', 'blocked', 'waiting', 'not needed'}: unit ids in plan order, by :func:`unit_state`."""
    cache, results = Path(cache_dir).expanduser() / study.name, load_results(results_dir)
    out = {"done": [], "ready": [], "blocked": [], "waiting": [], "not needed": []}
    for unit in study.units:
        out[unit_state(study, unit, cache, results)].append(unit.id)
    return out


def describe(study: Study, cache_dir, results_dir) -> str:
    """The plan's status: a summary line, then every unit left, in run order, with its state and estimate."""
    state = status(study, cache_dir, results_dir)
    tag = {uid: name for name in ("ready", "blocked", "waiting") for uid in state[name]}
    left = [u for u in study.units if u.id in tag]
    skipped = (f", {len(state['not needed'])} not needed (edge points, seeds no borderline claim asks for, cache "
               "files no unit left needs)"
               if state["not needed"] else "")
    lines = [f"{study.name}: {len(state['done'])} of {len(study.units)} units done{skipped}; left {len(left)} "
             f"(~{sum(u.est_s for u in left) / 60:.0f} H200 min estimated, edge points included)"]
    lines += [f"  {tag[u.id]:<7} {u.id}  (~{u.est_s / 60:.1f} min)" for u in left]
    return "\n".join(lines)


def selected(unit: Unit, only) -> bool:
    """Whether ``unit`` matches one of the shell patterns in ``only`` (None or empty: every unit)."""
    return not only or any(fnmatch.fnmatchcase(unit.id, pattern) for pattern in only)


def fits_session(unit: Unit, cache: Path, session_left_s: float | None) -> bool:
    """Whether ``unit`` may start with ``session_left_s`` device seconds left to the session (None: no limit). A
    resumable training that has not started in this cache starts only if its whole estimate fits: the cache does
    not outlive the session's machine, so a training cut short there is lost. Everything else: True (a started
    training goes on; other units are held to the command's budget)."""
    if session_left_s is None or unit.kind not in RESUMABLE_KINDS or (cache / "train" / unit.id).exists():
        return True
    return unit.est_s <= session_left_s


@contextlib.contextmanager
def computed_as(study: Study, unit: Unit):
    """The context a unit runs in: a training unit's attention layout and memory format are the study's
    ``training_setting``; every other unit runs q/k/v as :func:`.plan.attention_qkv_contiguous` says, channels-last.
    The unit's JSON (:func:`environment`) records both."""
    setting = (study.training_setting if unit.kind in TRAINING_KINDS
               else TrainingSetting(attention_qkv_contiguous(unit.kind), channels_last=True))
    with adm.qkv_layout(setting.qkv_contiguous), accel.channels_last(setting.channels_last):
        yield


def compile_key(study: Study, unit: Unit):
    """What a sampling unit compiles the first time it runs in a process: its networks (the arm's diffusion model,
    the guide) and their shapes (CFG's batched [cond, ∅] pair). None for the other kinds, which run eagerly or count
    their compilation in their estimate."""
    if unit.kind != "sample":
        return None
    spec = study.methods[unit.params["method"]]
    return spec.get("arm"), spec.get("guide"), bool(spec.get("cfg"))


def start_estimate(study: Study, unit: Unit, compiled: set) -> float:
    """Seconds ``unit`` is expected to take in this process: its plan estimate, plus :data:`~.plan.FIRST_COMPILE_S`
    if nothing with its :func:`compile_key` has run in the process yet (``compiled``: the keys that have)."""
    if study.tiny:
        return 0.0
    key = compile_key(study, unit)
    return unit.est_s + (FIRST_COMPILE_S if key is not None and key not in compiled else 0.0)


def run_next(study: Study, cache_dir=DEFAULT_CACHE, results_dir=None, budget_s: float = 540.0, only=None,
             session_left_s: float | None = None) -> dict:
    """Run the first unfinished units in plan order while the budget lasts (a unit starts only if its estimate in
    this process fits, :func:`start_estimate`, or if it is a resumable training, which starts only if it fits what is
    left of ``session_left_s`` when it would start: :func:`fits_session`); ``only``: shell patterns of unit ids to
    consider (None: all). Returns {'ran': [...], 'finished': [...], 'left': n}. Prints what is left."""
    cache = Path(cache_dir).expanduser() / study.name
    results_dir = Path(results_dir)
    cache.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    deadline = start + budget_s
    ran, finished, compiled = [], [], set()
    results = load_results(results_dir)
    for unit in study.units:
        if not selected(unit, only) or unit_state(study, unit, cache, results) != "ready":
            continue
        now = time.monotonic()
        remaining = deadline - now
        if remaining <= 0 or (unit.kind not in RESUMABLE_KINDS and start_estimate(study, unit, compiled) > remaining):
            break
        session_left = None if session_left_s is None or study.tiny else session_left_s - (now - start)
        if not fits_session(unit, cache, session_left):
            print(f"{unit.id}: not started (~{unit.est_s / 60:.1f} min estimated, {session_left / 60:.1f} min left "
                  "to this session; its cache would not outlive the session)")
            continue
        ran.append(unit.id)
        compiled.add(compile_key(study, unit))
        with computed_as(study, unit):
            if unit.kind == "sample":
                run_sample(study, unit, cache, results_dir, results)
            elif unit.kind == "reference":
                run_reference(study, cache)
            elif unit.kind in DIAGNOSTIC_KINDS:
                _run_diagnostic(study, unit, cache, results_dir, results)
            elif unit.kind == "calibrate":
                run_calibration_finetune(study, unit, cache)
            elif not run_training(study, unit, cache, max(1.0, remaining - (0 if study.tiny else STARTUP_MARGIN_S))):
                break
            if unit.kind in TRAINING_KINDS:
                write_training_record(unit, cache, results_dir, environment(study))
        finished.append(unit.id)
        print(f"{unit.id}: finished in {time.monotonic() - now:.0f} s", flush=True)  # a detached worker's log
        results = load_results(results_dir)  # what the unit wrote decides what is ready next
    print(describe(study, cache_dir, results_dir))
    left = sum(unit_state(study, u, cache, results) not in ("done", "not needed") for u in study.units)
    return {"ran": ran, "finished": finished, "left": left}
