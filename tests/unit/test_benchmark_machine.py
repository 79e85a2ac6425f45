"""benchmarks/machine.py: the conditions every benchmark prints before its figures."""
import importlib.util
from pathlib import Path

import torch

SPEC = importlib.util.spec_from_file_location(
    "benchmark_machine", Path(__file__).resolve().parents[2] / "benchmarks" / "machine.py")
machine = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(machine)


def test_product_rate_restores_the_thread_count_and_is_a_rate():
    before = torch.get_num_threads()
    rate = machine.matmul_peak_gflops(1, rows=64, width=32, ffn=48)
    assert torch.get_num_threads() == before
    assert 0 < rate < 1e5                  # GFLOP/s of one core, not FLOP/s or seconds


def test_header_names_date_machine_load_rate_and_command():
    lines = machine.header().splitlines()
    assert len(lines) == 4
    assert f"{machine.cores()} cores" in lines[0] and "torch" in lines[0]
    assert lines[1].startswith("load average")
    assert lines[2].startswith("fp32 product rate ") and "GFLOP/s at" in lines[2]
    assert lines[3].startswith("command: python ")
