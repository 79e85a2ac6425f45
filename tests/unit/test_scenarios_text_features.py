"""Benchmarks built with a backbone carry their class text features (image and feature level)."""
import pytest
import torch

import scenarios
from clap4cl import ClapModel, class_text_features
from clap4cl.features.cache import FeatureCache


@pytest.mark.parametrize("level", ["image", "features"])
def test_a_benchmark_built_with_a_backbone_carries_its_text_features(level, tiny_backbone, tmp_path):
    bench = scenarios.class_incremental("digits", n_experiences=5, level=level,
                                        backbone=tiny_backbone, cache=FeatureCache(tmp_path),
                                        progress=False)
    expected = class_text_features(tiny_backbone, bench.class_names, bench.templates)
    assert bench.info.text_features is bench.text_features
    assert bench.text_features.class_names == tuple(bench.class_names)
    torch.testing.assert_close(bench.text_features.normalized, expected.normalized)
    model = ClapModel(bench.text_features, logit_scale=100.0)      # the README's CLAP block
    assert model.class_features.shape == (10, 64)


def test_templates_override_the_datasets(tiny_backbone):
    bench = scenarios.class_incremental("digits", n_experiences=5, backbone=tiny_backbone,
                                        templates=["a digit: {}."])
    assert bench.info.templates == ("a digit: {}.",)
    expected = class_text_features(tiny_backbone, bench.class_names, ["a digit: {}."])
    torch.testing.assert_close(bench.text_features.normalized, expected.normalized)


def test_without_a_backbone_clap_model_says_which_call_to_make():
    bench = scenarios.class_incremental("digits", n_experiences=5)
    assert bench.text_features is None
    with pytest.raises(TypeError, match=r"scenarios.class_incremental\(\.\.\., backbone=clip\)"):
        ClapModel(bench.text_features, logit_scale=100.0)
