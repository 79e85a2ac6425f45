"""Names from a config never make paths outside the output root or the cache root."""
import os

import pytest

from clap4cl.cli import main
from clap4cl.errors import UserError
from clap4cl.features.cache import CacheKey, FeatureCache
from clap4cl.runner.config import load_config
from clap4cl.runner.rundir import default_output, path_component


@pytest.mark.parametrize("setting", ["dataset.name=../../x", "dataset.name=/tmp/x",
                                     "dataset.name=x/../../y", "method=../../x"])
@pytest.mark.parametrize("seeds", [False, True])
def test_a_path_as_dataset_or_method_name_creates_nothing_anywhere(tmp_path, monkeypatch, capsys,
                                                                  setting, seeds):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("CLAP4CL_CACHE", str(tmp_path / "cache"))
    before = sorted(os.walk(tmp_path))
    code = main(["run", "--quiet", "--set", setting, *(["--seeds", "0"] if seeds else [])])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "unknown dataset" in err or "is not valid" in err
    assert sorted(os.walk(tmp_path)) == before             # not even runs/ was created


def test_the_default_output_is_made_of_registry_names_under_runs():
    config = load_config(None, ["dataset.name=Fashion-MNIST", "method=zeroshot", "run=3"])
    assert str(default_output(config)) == os.path.join("runs", "fashion_mnist-zeroshot-run3")
    assert str(default_output(config, seeds=True)) == os.path.join("runs", "fashion_mnist-zeroshot")


def test_an_explicit_output_with_an_unknown_dataset_writes_nothing(tmp_path, capsys):
    assert main(["run", "--quiet", "--output", str(tmp_path / "out"),
                 "--set", "dataset.name=../../x"]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["..", "../x", "a/b", ".hidden", "", "a\\b", "x..y"])
def test_path_components_refuse_separators_and_dot_dot(name):
    with pytest.raises(UserError, match="cannot name a directory"):
        path_component(name, "dataset")


def test_cache_files_stay_in_the_cache_whatever_the_dataset_id(tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    key = CacheKey("backbone", "../../../x", "train", "original", "pre")
    path = cache.data_path(key).resolve()
    assert path.parent == (tmp_path / "cache" / "features").resolve()
    with pytest.raises(ValueError, match="split/view names"):
        cache.data_path(CacheKey("backbone", "d", "../../x", "original", "pre"))
