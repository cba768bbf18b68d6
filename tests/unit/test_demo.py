"""`diffguide demo`, the embedded default: exit 0, the table, a non-empty PNG, and numbers that agree with the truth."""

import json

from click.testing import CliRunner

from diffguide.cli import main


def test_demo_command(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ("unguided", "exact conditional", "noise-aware classifier", "x̂0 log-softmax", "x̂0 EluCD", "CFG exact"):
        assert name in result.output
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    by_name = {m["name"].split(" (")[0]: m for m in metrics["methods"]}
    floor = metrics["exact_floor"]["mean"]
    # unguided samples ignore their labels: accuracy is the chance that p(y|x) picks the (balanced) target label
    assert 0.25 < by_name["unguided"]["class_accuracy"] < 0.42
    for exact in ("exact conditional", "noise-aware classifier"):
        assert by_name[exact]["class_accuracy"] > 0.98
        assert by_name[exact]["mode_coverage"] == 1.0
        assert by_name[exact]["sliced_wasserstein"] < 1.5 * floor + 0.05
    # an overconfident off-the-shelf classifier on x̂0 over-concentrates: it is farther from the exact conditional
    overconfident = [m for n, m in by_name.items() if n.startswith("x̂0")]
    assert all(m["sliced_wasserstein"] > 2 * by_name["exact conditional"]["sliced_wasserstein"] for m in overconfident)
    # every registered sampler at 20 steps, guided to the exact conditional, is as close as the exact methods above
    from diffguide.samplers import SAMPLERS

    assert {r["sampler"] for r in metrics["samplers"]} == set(SAMPLERS)
    assert all(r["sliced_wasserstein"] < 1.5 * floor + 0.05 for r in metrics["samplers"] if r["steps"] == 20)
