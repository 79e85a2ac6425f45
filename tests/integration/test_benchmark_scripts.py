"""The benchmark scripts behind docs/benchmarks.md still run: the full-protocol benchmark at a
tiny scale and the end-to-end one in its quick mode (whose quick mode once broke unnoticed,
because nothing ran it). Each runs in its own process, as a user starts it: the scripts set
thread counts and patch the toolkit for their measurements. What they measure is not checked
here: timings belong to the scripts, never to tests."""
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run_script(name, *args) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True,
                          text=True, timeout=600, cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_full_stream_benchmark_prints_its_phase_table():
    out = run_script("bench_full_stream.py", "--size", "cifar100", "--scale", "0.01",
                     "--epochs", "1", "--finetune-epochs", "1", "--top", "2")
    for expected in ("fp32 product rate", "cifar100-sized stream", "threads: auto ->", "total",
                     "peak memory", "train profile", "eval profile"):
        assert expected in out, f"{expected!r} missing from:\n{out}"


def test_end_to_end_benchmark_quick_mode_runs():
    out = run_script("bench_end_to_end.py", "--quick")
    for expected in ("fp32 product rate", "| - train |", "| - eval |", "x bare encoder (goal <= 1.3)"):
        assert expected in out, f"{expected!r} missing from:\n{out}"
