"""scenarios.class_incremental: Avalanche benchmarks at image and feature level."""
import dataclasses

import pytest
import torch
from PIL import Image

import scenarios
from clap4cl.errors import DataNotFoundError, UserError
from clap4cl.features.cache import FeatureCache
from scenarios.datasets.digits import DIGIT_NAMES


@pytest.fixture(scope="module")
def digits_benchmark():
    return scenarios.class_incremental("digits", n_experiences=5)


def test_digits_experiences_hold_consecutive_labels(digits_benchmark):
    bench = digits_benchmark
    assert len(bench.train_stream) == len(bench.test_stream) == 5
    assert bench.info.classes_per_experience == ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
    assert bench.info.n_experiences == 5 and bench.info.n_classes == 10
    for k, (train_exp, test_exp) in enumerate(zip(bench.train_stream, bench.test_stream)):
        assert sorted(train_exp.classes_in_this_experience) == [2 * k, 2 * k + 1]
        assert sorted({int(t) for t in test_exp.dataset.targets}) == [2 * k, 2 * k + 1]
    assert sum(len(e.dataset) for e in bench.train_stream) == 1347


def test_label_i_is_original_class_order_i(digits_benchmark):
    info = digits_benchmark.info
    assert list(info.class_order) == scenarios.default_class_order(10, 0)
    assert info.class_names == tuple(DIGIT_NAMES[c] for c in info.class_order)
    splits = scenarios.get_dataset_splits("digits")
    image, label = digits_benchmark.train_stream[0].dataset[0][:2]
    original = info.class_order[label]
    assert original in set(splits.train.targets)
    assert info.dataset_name == "digits" and info.text_features is None
    assert info.templates == splits.templates and info.level == "image"
    assert info.input_dims is None and info.null_image is None


def test_info_is_one_frozen_object_and_the_old_attributes_still_read(digits_benchmark):
    bench = digits_benchmark
    assert isinstance(bench.info, scenarios.StreamInfo)
    with pytest.raises(dataclasses.FrozenInstanceError):
        bench.info.level = "features"
    assert bench.class_order == list(bench.info.class_order)
    assert bench.class_names == list(bench.info.class_names)
    assert bench.classes_per_experience == [list(c) for c in bench.info.classes_per_experience]
    assert (bench.dataset_name, bench.templates, bench.level, bench.fingerprint) == (
        "digits", bench.info.templates, "image", bench.info.fingerprint)


def test_explicit_order_and_larger_first_experience():
    bench = scenarios.class_incremental("digits", n_experiences=3, class_order=list(range(10)),
                                        first_experience_classes=4)
    assert bench.info.classes_per_experience == ((0, 1, 2, 3), (4, 5, 6), (7, 8, 9))
    assert bench.info.class_names[:2] == ("zero", "one")
    assert [len(e.classes_in_this_experience) for e in bench.train_stream] == [4, 3, 3]


def test_image_level_applies_backbone_preprocessing(tiny_backbone):
    bench = scenarios.class_incremental("digits", n_experiences=2, backbone=tiny_backbone)
    x = bench.train_stream[0].dataset[0][0]
    assert isinstance(x, torch.Tensor) and x.shape == (3, tiny_backbone.image_size,
                                                       tiny_backbone.image_size)


def _tree(root):
    for c, name in enumerate(["red", "green", "blue", "gray"]):
        for i in range(5):
            path = root / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), color=(60 * c, 10 * i, 0)).save(path)
    return root


def test_feature_level_from_an_image_folder(tmp_path, tiny_backbone):
    bench = scenarios.class_incremental(
        "image_folder", n_experiences=2, root=_tree(tmp_path / "imgs"), level="features",
        backbone=tiny_backbone, cache=FeatureCache(tmp_path / "cache"), progress=False)
    x, y = bench.train_stream[1].dataset[0][:2]
    assert x.shape == (tiny_backbone.embed_dim,) and x.dtype == torch.float32
    assert y in (2, 3)
    assert bench.info.level == "features" and bench.info.fingerprint.startswith("image_folder-")


def test_synthetic_stream_has_text_features_in_label_order():
    bench = scenarios.class_incremental("synthetic", n_experiences=5, run=1, n_classes=10,
                                        train_per_class=10, test_per_class=5)
    data = scenarios.make_synthetic(n_classes=10, train_per_class=10, test_per_class=5)
    info = bench.info
    order = list(info.class_order)
    assert order == scenarios.default_class_order(10, 1)
    assert torch.equal(info.text_features.normalized, data.text_features.normalized[order])
    assert info.class_names == tuple(f"class {c}" for c in order)
    x, y = bench.test_stream[0].dataset[0][:2]
    assert x.shape == (64,) and y in (0, 1)
    assert info.level == "features" and info.input_dims is None
    assert torch.equal(info.null_image, torch.from_numpy(data.null_image))


def test_two_modality_info_holds_the_modality_widths_and_no_text():
    bench = scenarios.class_incremental("two_modality", n_experiences=2)
    assert bench.info.text_features is None and bench.info.null_image is None
    assert bench.info.input_dims == bench.input_dims
    assert bench.info.input_dims == {"a": 8, "b": 8} and bench.info.n_classes == 4


def test_synthetic_train_items_draw_one_of_two_views():
    bench = scenarios.class_incremental("synthetic", n_experiences=2, train_per_class=2,
                                        test_per_class=1, n_classes=2)
    dataset = bench.train_stream[0].dataset
    torch.manual_seed(0)
    seen = {tuple(dataset[0][0][:3].tolist()) for _ in range(30)}
    assert len(seen) == 2
    original = {tuple(dataset.eval()[0][0][:3].tolist()) for _ in range(10)}
    assert len(original) == 1 and original < seen            # eval group: the original view


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(name="nope", n_experiences=2), UserError, "choose one of"),
    (dict(name="digits", n_experiences=11), UserError, "11 experiences for 10 classes"),
    (dict(name="digits", n_experiences=2, class_order=[0] * 10), UserError, "permutation"),
    (dict(name="digits", n_experiences=2, level="pixels"), UserError, "level"),
    (dict(name="digits", n_experiences=2, level="features"), UserError, "backbone"),
    (dict(name="image_folder", n_experiences=2), DataNotFoundError, "dataset.root"),
    (dict(name="cub200", n_experiences=2, root="/definitely/not/here"), DataNotFoundError,
     "does not exist"),
])
def test_bad_input_is_a_one_line_user_error(kwargs, error, fragment):
    name = kwargs.pop("name")
    with pytest.raises(error) as info:
        scenarios.class_incremental(name, **kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)
