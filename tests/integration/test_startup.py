"""The command line starts without the heavy libraries: ``clap4cl --help``, ``run --help``
and a one-line config error import no torch, Avalanche, open_clip or matplotlib."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "avalanche", "open_clip", "matplotlib")

# Runs the CLI's main() in a fresh interpreter, then prints its exit status and which heavy
# modules it imported.
PROBE = """
import sys
from clap4cl.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit:
    status = exit.code
print("STATUS", status)
print("HEAVY", ",".join(m for m in {heavy!r} if m in sys.modules))
"""


def probe(*argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv],
                         capture_output=True, text=True, env=env, timeout=120)
    lines = dict(line.split(" ", 1) if " " in line else (line, "")
                 for line in out.stdout.splitlines() if line.startswith(("STATUS", "HEAVY")))
    return lines["STATUS"], lines["HEAVY"], out.stderr


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["extract", "--help"]])
def test_help_imports_nothing_heavy(argv):
    status, heavy, _ = probe(*argv)
    assert status == "0"
    assert heavy == ""


@pytest.mark.parametrize("override, key", [("method=nope", "method"),
                                           ("memory.selector=nope", "memory.selector"),
                                           ("dataset.name=nope", "dataset.name"),
                                           ("plugins=[nope]", "plugins"),
                                           ("seed=-1", "seed"),
                                           ("clap.vga_heads=3", "clap.vga_heads"),
                                           # the width of an open_clip architecture is
                                           # read from its JSON config, no model built
                                           ("backbone.arch=ViT-B-16 clap.vga_heads=7",
                                            "clap.vga_heads"),
                                           ("clap.lr=.nan", "clap.lr")])
def test_config_error_is_one_line_and_imports_nothing_heavy(override, key):
    argv = [a for o in override.split() for a in ("--set", o)]
    status, heavy, stderr = probe("run", *argv)
    assert status == "2"
    assert heavy == ""
    assert stderr.count("\n") == 1 and stderr.startswith(f"clap4cl: error: {key}")


def test_errors_module_loads_no_torch():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import clap4cl.errors"],
                         capture_output=True, text=True, env=env, timeout=120)
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "clap4cl.errors" in imported
    assert not {m for m in imported if m.split(".")[0] in HEAVY}


def test_the_probe_sees_heavy_imports():
    """The probe is not vacuous: a valid config's run path does import torch."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "import sys, clap4cl.runner.experiment; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.stdout.strip() == "True"
