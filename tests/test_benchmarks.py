"""The step benchmark's smoke mode: one repeat of a tiny variant, every contender.

Speed is never asserted here; this only proves that the benchmark runs and
reports every contender, measured or absent.
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


def test_bench_step_smoke_reports_every_contender():
    command = [
        sys.executable, os.path.join(ROOT, "benchmarks", "bench_step.py"),
        "--repeats", "1", "--variant", "R1-1-1-1x1", "--image_size", "32", "--batch_size", "2",
        "--steps", "1", "--num_classes", "3", "--warmup_timeout", "900",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    medians = {(line["contender"], line["mode"]): line for line in lines if line["kind"] == "median"}
    absent = {line["contender"]: line["reason"] for line in lines if line["kind"] == "absent"}
    measured = {line["contender"] for line in lines if line["kind"] == "measurement"}
    for name in bench_step.DEFAULT_CONTENDERS:
        family, backend, _ = bench_step.CONTENDERS[name]
        available = _installed("timm") and _installed("torch") if family == "timm" else _installed(backend)
        if not available:
            assert name in absent, f"{name} is not installed and must be reported absent"
            continue
        assert name in measured and name not in absent, f"{name}: {absent.get(name)}"
        for mode in bench_step.MODES:
            line = medians[(name, mode)]
            assert line["images_per_s"] > 0 and line["ms_per_step"] > 0 and line["peak_memory_mb"] > 0
            assert line["variant"] == "R1-1-1-1x1" and line["batch_size"] == 2 and line["image_size"] == 32
            if name.startswith("bit_keras") and medians.get(("timm/eager", mode)):
                assert line["ratio_to_timm_eager"] > 0
    assert "contender" in result.stdout and "vs timm eager" in result.stdout  # the table
