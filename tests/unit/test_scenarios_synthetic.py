"""Synthetic CLIP-like features."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from clap4cl.errors import UserError
from scenarios.datasets.synthetic import make_synthetic


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = make_synthetic(seed=3), make_synthetic(seed=3), make_synthetic(seed=4)
    for field in ("train_features", "train_features_flip", "train_targets", "test_features",
                  "test_targets"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert torch.equal(a.text_features.per_template, b.text_features.per_template)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert not np.allclose(a.train_features, c.train_features)


def test_shapes_dtypes_and_normalisation():
    data = make_synthetic(n_classes=4, dim=16, n_templates=3, train_per_class=5, test_per_class=2)
    assert data.train_features.shape == data.train_features_flip.shape == (20, 16)
    assert data.test_features.shape == (8, 16)
    assert data.train_features.dtype == np.float32
    assert np.allclose(np.linalg.norm(data.train_features, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(data.test_features, axis=1), 1, atol=1e-5)
    assert data.train_targets.tolist() == np.repeat(np.arange(4), 5).tolist()
    assert data.text_features.per_template.shape == (4, 3, 16)
    assert (data.text_features.variance > 0).all()
    assert data.class_names == ("class 0", "class 1", "class 2", "class 3")


def test_flip_view_is_a_slightly_perturbed_copy():
    data = make_synthetic()
    cos = (data.train_features * data.train_features_flip).sum(1)
    assert cos.min() > 0.95 and cos.max() < 1.0


def test_changing_the_test_size_keeps_the_training_data():
    a, b = make_synthetic(test_per_class=50), make_synthetic(test_per_class=7)
    np.testing.assert_array_equal(a.train_features, b.train_features)


def test_zero_shot_is_clearly_worse_than_a_linear_probe():
    data = make_synthetic()
    zero_shot = (data.test_features @ data.text_features.normalized.numpy().T).argmax(1)
    zero_shot_accuracy = (zero_shot == data.test_targets).mean()
    probe = LogisticRegression(max_iter=1000).fit(data.train_features, data.train_targets)
    probe_accuracy = probe.score(data.test_features, data.test_targets)
    assert 0.4 <= zero_shot_accuracy <= 0.75
    assert probe_accuracy > 0.9
    assert probe_accuracy - zero_shot_accuracy > 0.2


def test_modality_gap_lowers_image_text_cosines_without_changing_zero_shot():
    near, far = make_synthetic(modality_gap=0.0), make_synthetic(modality_gap=2.0)
    cos = lambda d: d.test_features @ d.text_features.normalized.numpy().T  # noqa: E731
    assert cos(far).max(1).mean() < cos(near).max(1).mean() - 0.1
    agree = (cos(far).argmax(1) == cos(near).argmax(1)).mean()
    assert agree > 0.9


@pytest.mark.parametrize("kwargs", [dict(n_classes=0), dict(dim=1), dict(noise=-1.0),
                                    dict(misalignment=1.0), dict(seed=-1)])
def test_bad_parameters_are_user_errors(kwargs):
    with pytest.raises(UserError):
        make_synthetic(**kwargs)
