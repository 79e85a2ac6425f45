"""``clap4cl <args>`` in this process, as the integration tests call the command line."""
import pytest

from clap4cl.cli import main


def run_cli(*args, cwd, env_cache, capsys=None):
    """``clap4cl <args>`` in this process from ``cwd`` with ``CLAP4CL_CACHE=env_cache``:
    (exit code, stderr) (stderr only when ``capsys`` is given)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setenv("CLAP4CL_CACHE", str(env_cache))
        if capsys is not None:
            capsys.readouterr()
        code = main(list(args))
    return code, capsys.readouterr().err if capsys is not None else ""
