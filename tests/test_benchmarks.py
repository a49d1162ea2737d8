"""The step benchmark's smoke mode: one repeat of a tiny variant, one contender of each kind.

Speed is never asserted here; this only proves that the benchmark runs and
reports every contender it is given, measured or absent. The compiled
contenders (XLA, torch.compile) take minutes to compile on 2 cores, so CI
runs the eager one of each family.
"""

import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import bench_step  # noqa: E402


def _installed(module):
    return importlib.util.find_spec(module) is not None


# Two runs of three contenders each, one after the other: the harness keeps its contenders' processes
# alive together, and six of them beside the suite's two workers crowd a 24 GB machine.
SMOKE_RUNS = [
    ["bit_keras/tf", "bit_keras/tf-folded", "timm/eager"],
    ["bit_keras/tf-floor", "bit_keras/jax", "keras/resnet50v2"],
]


def run_smoke(contenders):
    command = [
        sys.executable, os.path.join(ROOT, "benchmarks", "bench_step.py"),
        "--repeats", "1", "--variant", "R1-1-1-1x1", "--image_size", "32", "--batch_size", "2",
        "--steps", "1", "--num_classes", "3", "--warmup_timeout", "900", "--contenders", ",".join(contenders),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout, [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_bench_step_smoke_reports_every_contender():
    for contenders in SMOKE_RUNS:
        stdout, lines = run_smoke(contenders)
        check_report(contenders, stdout, lines)


def check_report(contenders, stdout, lines):
    medians = {(line["contender"], line["mode"]): line for line in lines if line["kind"] == "median"}
    absent = {line["contender"]: line["reason"] for line in lines if line["kind"] == "absent"}
    measured = {line["contender"] for line in lines if line["kind"] == "measurement"}
    for name in contenders:
        family, backend, _ = bench_step.CONTENDERS[name]
        available = _installed("timm") and _installed("torch") if family == "timm" else _installed(backend)
        if not available:
            assert name in absent, f"{name} is not installed and must be reported absent"
            continue
        assert name in measured and name not in absent, f"{name}: {absent.get(name)}"
        for mode in bench_step.MODES:
            if name in bench_step.INFERENCE_ONLY and mode == "train":
                assert (name, mode) not in medians and not any(
                    line.get("contender") == name and line.get("mode") == mode for line in lines
                ), f"{name} has no training step to time"
                continue
            line = medians[(name, mode)]
            assert line["images_per_s"] > 0 and line["ms_per_step"] > 0 and line["peak_memory_mb"] > 0
            assert line["variant"] == "R1-1-1-1x1" and line["batch_size"] == 2 and line["image_size"] == 32
            if name.startswith("bit_keras") and medians.get(("timm/eager", mode)):
                assert line["ratio_to_timm_eager"] > 0
    if "bit_keras/tf-floor" in measured:
        assert "the floor" in medians[("bit_keras/tf-floor", "train")]["description"]
    if "bit_keras/tf-folded" in measured:
        assert "folded in" in medians[("bit_keras/tf-folded", "infer")]["description"]
    assert "contender" in stdout and "vs timm eager" in stdout  # the table
    if _installed("tensorflow"):
        (ceiling,) = [line for line in lines if line["kind"] == "ceiling"]
        assert ceiling["forward_gflop"] == round(_tiny_forward_flops(image_size=32, num_classes=3) / 1e9, 4)
        assert ceiling["gemm_gflop_per_s"] > 0
        assert (
            abs(ceiling["infer_images_per_s"] - ceiling["gemm_gflop_per_s"] / ceiling["forward_gflop"])
            < 0.01 * ceiling["infer_images_per_s"]
        )
        assert abs(3 * ceiling["train_images_per_s"] - ceiling["infer_images_per_s"]) < 0.01 * ceiling["infer_images_per_s"]
        assert "ceiling:" in stdout


def _tiny_forward_flops(image_size, num_classes):
    """R1-1-1-1x1 counted by hand: a 7x7/2 root and a max-pool /2, then one bottleneck unit per
    block (1x1 in, 3x3 carrying the block's stride, 1x1 out, and a 1x1 projection), then the head."""

    def conv(size, kernel, cin, cout):
        return 2 * size * size * kernel * kernel * cin * cout

    size = image_size // 2
    flops = conv(size, 7, 3, 64)
    size //= 2
    cin = 64
    for block, mid in enumerate((64, 128, 256, 512)):
        out = size if block == 0 else size // 2
        flops += conv(size, 1, cin, mid) + conv(out, 3, mid, mid) + conv(out, 1, mid, 4 * mid) + conv(out, 1, cin, 4 * mid)
        size, cin = out, 4 * mid
    return flops + 2 * cin * num_classes


def test_bench_memory_smoke_reports_rss_per_cycle_and_the_growth_against_keras():
    command = [
        sys.executable, os.path.join(ROOT, "benchmarks", "bench_memory.py"),
        "--variant", "R1-1-1-1x1", "--cycles", "2", "--timeout", "600",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    cycles = {(line["contender"], line["cycle"]): line["rss_mb"] for line in lines if line["kind"] == "cycle"}
    summaries = {line["contender"]: line for line in lines if line["kind"] == "summary"}
    assert set(summaries) == {"bit_keras", "keras/resnet50v2"}
    for name, summary in summaries.items():
        first, last = cycles[(name, 1)], cycles[(name, 2)]
        assert first > 100 and last > 100  # a TensorFlow process holds far more than 100 MB
        assert summary["growth_per_cycle_mb"] == round(last - first, 1)
    growth = {name: cycles[(name, 2)] - cycles[(name, 1)] for name in summaries}
    if growth["keras/resnet50v2"]:
        expected = growth["bit_keras"] / growth["keras/resnet50v2"]
        assert summaries["bit_keras"]["growth_vs_keras"] == round(expected, 3)
    assert "growth/cycle MB" in result.stdout and "vs keras" in result.stdout  # the table
