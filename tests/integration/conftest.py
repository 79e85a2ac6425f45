"""Fixtures of the integration tests: one default ``clap4cl run`` per session."""
import pytest

from cli_helper import run_cli  # pytest puts tests/integration on sys.path


@pytest.fixture(scope="session")
def default_cli_run(tmp_path_factory):
    """``clap4cl run --quiet`` with every default (digits, CLAP, the packaged tiny-vit),
    run once per session in this process from a fresh directory: (exit code, that
    directory), with the run in ``run/`` and its cache in ``cache/``. Read-only for
    the tests that share it."""
    root = tmp_path_factory.mktemp("default_run")
    code, _ = run_cli("run", "--quiet", "--output", str(root / "run"), cwd=root,
                      env_cache=root / "cache")
    return code, root
