"""The documentation: runnable examples run, the site builds strictly, the README stays short.

Every fenced code block in README.md and docs/*.md whose preceding line is
``<!-- runnable -->`` is executed: Python blocks with ``exec`` in a fresh namespace,
shell blocks line by line, each line a ``clap4cl ...`` command run through
``clap4cl.cli.main`` (the console script's entry point) in this process; both in a
temporary working directory, offline. ``python -m clap4cl`` as a process runs in the
torchrun tests, the installed ``clap4cl`` script in a fresh install's first run.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from clap4cl.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MARKER = "<!-- runnable -->"
FENCE = re.compile(r"^```(\w*)\s*$")
README_LIMIT = 8192


def markdown_files():
    return [ROOT / "README.md"] + sorted(DOCS.glob("*.md"))


def runnable_blocks(path: Path):
    """[(line number, language, code)] of the blocks marked runnable in ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match and i > 0 and lines[i - 1].strip() == MARKER:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            blocks.append((i + 1, match.group(1), "\n".join(lines[i + 1:end]) + "\n"))
            i = end
        elif lines[i].strip() == MARKER:
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if not FENCE.match(nxt):
                raise AssertionError(f"{path.name}:{i + 1}: {MARKER} is not directly above a code fence")
        i += 1
    return blocks


ALL_BLOCKS = [(path, line, lang, code) for path in markdown_files()
              for line, lang, code in runnable_blocks(path)]


def shell_commands(code: str):
    """The commands of a shell block, backslash continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_every_python_block_is_runnable_and_the_main_uses_are_covered():
    """Every Python example in the README and docs runs as written (no unmarked ones), and
    the marker stays on the main uses; losing it fails here."""
    for path in markdown_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.strip() == "```python":
                assert i > 0 and lines[i - 1].strip() == MARKER, (
                    f"{path.name}:{i + 1}: a Python block without {MARKER} above it")
    by_page = {}
    for path, _, lang, _ in ALL_BLOCKS:
        by_page.setdefault(path.name, []).append(lang)
    assert by_page.get("clap4clip.md", []).count("python") >= 2      # CLAP; a stock strategy
    assert "python" in by_page.get("metrics-and-novelty.md", [])     # OOD evaluation
    assert "python" in by_page.get("multimodal-plugins.md", [])
    assert "python" in by_page.get("README.md", [])
    assert "bash" in by_page.get("cli-and-config.md", [])            # clap4cl run --set ...
    assert all(lang in ("python", "bash") for langs in by_page.values() for lang in langs)


@pytest.mark.parametrize("path,line,lang,code",
                         [pytest.param(*b, id=f"{b[0].name}:{b[1]}") for b in ALL_BLOCKS])
def test_runnable_block(path, line, lang, code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLAP4CL_CACHE", str(tmp_path / "cache"))
    if lang == "python":
        namespace = {"__name__": "__docs__"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(code, f"{path.name}:{line}", "exec"), namespace)  # noqa: S102
        return
    commands = shell_commands(code)
    assert commands, f"{path.name}:{line}: empty shell block"
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "clap4cl", f"{path.name}:{line}: only clap4cl commands run here: {command}"
        assert main(argv[1:]) == 0, f"{command}\n{capsys.readouterr().err[-2000:]}"
        if "--output" in argv:
            output = tmp_path / argv[argv.index("--output") + 1]
            assert (output / "results.json").is_file(), f"{command}: no results.json"


def test_readme_is_short():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes; move details into docs/"


def nav_pages(nav):
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            yield from nav_pages(value)
        else:
            yield value


def test_mkdocs_nav_lists_every_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["docs_dir"] == "docs"
    listed = list(nav_pages(config["nav"]))
    assert len(listed) == len(set(listed)), f"pages listed twice: {listed}"
    present = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(listed) == present


def test_docs_links_to_every_page_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        if page.name != "index.md":
            assert f"(docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install mkdocs)")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                             "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "clap4clip" / "index.html").is_file()


# Documents that exist only outside the repository, and bug numbers from them.
OUTSIDE_CITATION = re.compile(
    r"spec/|spec ``|\bspec (?:[0-9]|B[0-9]|section)|DESIGN\.md|\bbug B[0-9]|\(B[0-9]+\)"
    r"|(?<!docs/)regularizers\.md|landscape\.md|clap-coop\.md")
SOURCE_DIRS = ("clap4cl", "strategies", "scenarios", "tests", "benchmarks", "examples", "configs")


def source_files():
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".yaml") and path.name != "test_docs.py":
                yield path


def test_comments_cite_only_documents_in_the_repository():
    """Comments cite docs/ pages (and CLAP4CLIP's numbered entries), never outside notes."""
    entries = set(re.findall(r"\*\*(R[0-9]+)\.", (DOCS / "clap4clip.md").read_text(encoding="utf-8")))
    assert {"R1", "R8", "R26"} <= entries
    problems = []
    for path in source_files():
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT).as_posix()
        problems += [f"{name}: cites {m.group(0)!r}" for m in OUTSIDE_CITATION.finditer(text)]
        for page in re.findall(r"docs/([\w-]+\.md)", text):
            if not (DOCS / page).is_file():
                problems.append(f"{name}: cites missing docs/{page}")
        for entry in re.findall(r"docs/clap4clip\.md,? (R[0-9]+)", text):
            if entry not in entries:
                problems.append(f"{name}: cites docs/clap4clip.md {entry}, which does not exist")
    assert not problems, "\n".join(problems)
