"""Per-class prompt statistics (prompts.py) and the ClassTextFeatures container."""
from collections import Counter

import pytest
import torch

from clap4cl.encoders.prompts import class_text_features, clear_memory_cache, render, templates_id
from clap4cl.encoders.text_features import ClassTextFeatures

TEMPLATES = ("a photo of a {}.", "a blurry photo of the {}.", "itap of a {}.")
NAMES = ["cat", "dog", "container ship"]


@pytest.fixture(autouse=True)
def fresh_memory():
    clear_memory_cache()
    yield
    clear_memory_cache()


@pytest.fixture
def spy(tiny_backbone, monkeypatch):
    """Record every prompt the backbone encodes."""
    calls = []
    original = tiny_backbone.encode_texts

    def encode_texts(texts, *args, **kwargs):
        calls.append(list(texts))
        return original(texts, *args, **kwargs)

    monkeypatch.setattr(tiny_backbone, "encode_texts", encode_texts)
    return calls


def test_statistics_match_hand_computation(tiny_backbone):
    tf = class_text_features(tiny_backbone, NAMES, TEMPLATES)
    C, L, D = len(NAMES), len(TEMPLATES), tiny_backbone.embed_dim
    assert tf.per_template.shape == (C, L, D)
    assert tf.mean.shape == tf.normalized.shape == tf.variance.shape == (C, D)
    assert tf.class_names == tuple(NAMES) and tf.n_classes == C and tf.dim == D
    # per_template[c, l] is the embedding of template l filled with class c
    for c, name in enumerate(NAMES):
        expected = tiny_backbone.encode_texts([t.format(name) for t in TEMPLATES])
        torch.testing.assert_close(tf.per_template[c], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(tf.per_template.norm(dim=-1), torch.ones(C, L), rtol=0, atol=1e-5)
    e = tf.per_template.double()
    mean = e.sum(dim=1) / L
    torch.testing.assert_close(tf.mean.double(), mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(tf.normalized.double(), mean / mean.norm(dim=-1, keepdim=True),
                               rtol=0, atol=1e-6)
    variance = ((e - mean[:, None, :]) ** 2).sum(dim=1) / (L - 1)  # ddof = 1
    torch.testing.assert_close(tf.variance.double(), variance, rtol=1e-5, atol=1e-9)
    # the mean of unit vectors is shorter than 1 unless all templates agree
    assert (tf.mean.norm(dim=-1) < 1 - 1e-4).all()


def test_single_template_gives_zero_finite_variance(tiny_backbone):
    tf = class_text_features(tiny_backbone, NAMES, TEMPLATES[:1])
    assert tf.per_template.shape == (3, 1, 64)
    assert torch.equal(tf.variance, torch.zeros(3, 64))
    torch.testing.assert_close(tf.normalized, tf.per_template[:, 0], rtol=0, atol=1e-6)
    assert torch.isfinite(tf.normalized).all()


def test_callable_templates_equal_format_strings(tiny_backbone):
    callables = [lambda c: f"a photo of a {c}.", lambda c: f"a blurry photo of the {c}.",
                 lambda c: f"itap of a {c}."]
    assert [render(t, "dog") for t in callables] == [t.format("dog") for t in TEMPLATES]
    assert templates_id(callables) == templates_id(TEMPLATES)
    assert templates_id(TEMPLATES[:2]) != templates_id(TEMPLATES)
    from_strings = class_text_features(tiny_backbone, NAMES, TEMPLATES)
    clear_memory_cache()  # encode again through the callable path
    from_callables = class_text_features(tiny_backbone, NAMES, callables)
    for field in ("per_template", "mean", "normalized", "variance"):
        torch.testing.assert_close(getattr(from_callables, field), getattr(from_strings, field),
                                   rtol=0, atol=1e-6)


def test_each_class_is_encoded_once(tiny_backbone, spy):
    first = class_text_features(tiny_backbone, ["cat", "dog"], TEMPLATES)
    second = class_text_features(tiny_backbone, ["dog", "bird", "cat"], TEMPLATES)
    encoded = Counter(p for call in spy for p in call)
    expected = {t.format(n) for n in ("cat", "dog", "bird") for t in TEMPLATES}
    assert set(encoded) == expected
    assert all(count == 1 for count in encoded.values())
    assert len(spy) == 2 and len(spy[1]) == len(TEMPLATES)  # only "bird" the second time
    # rows follow the requested order, and cached rows equal fresh ones
    assert second.class_names == ("dog", "bird", "cat")
    torch.testing.assert_close(second.per_template[0], first.per_template[1], rtol=0, atol=0)
    torch.testing.assert_close(second.per_template[2], first.per_template[0], rtol=0, atol=0)
    # a repeated name is encoded once too
    class_text_features(tiny_backbone, ["fox", "fox"], TEMPLATES)
    assert spy[-1] == [t.format("fox") for t in TEMPLATES]


def test_disk_cache_avoids_encoding_in_a_new_process(tiny_backbone, cache_root, spy):
    first = class_text_features(tiny_backbone, NAMES, TEMPLATES, cache_dir=cache_root)
    assert len(spy) == 1
    assert len(list((cache_root / "text").glob("*.pt"))) == 1
    clear_memory_cache()  # what a new process starts with
    spy.clear()
    again = class_text_features(tiny_backbone, NAMES[::-1], TEMPLATES, cache_dir=cache_root)
    assert spy == []
    torch.testing.assert_close(again.per_template, first.per_template.flip(0), rtol=0, atol=0)
    # a new class in the same cache only encodes that class and keeps the old ones
    clear_memory_cache()
    class_text_features(tiny_backbone, ["cat", "owl"], TEMPLATES, cache_dir=cache_root)
    assert spy == [[t.format("owl") for t in TEMPLATES]]
    clear_memory_cache()
    spy.clear()
    class_text_features(tiny_backbone, NAMES + ["owl"], TEMPLATES, cache_dir=cache_root)
    assert spy == []


def test_disk_cache_is_keyed_by_templates_and_backbone(tiny_backbone, cache_root, spy):
    class_text_features(tiny_backbone, NAMES, TEMPLATES, cache_dir=cache_root)
    clear_memory_cache()
    class_text_features(tiny_backbone, NAMES, TEMPLATES[:2], cache_dir=cache_root)
    assert len(spy) == 2  # another template set is encoded again
    assert len(list((cache_root / "text").glob("*.pt"))) == 2


def test_damaged_disk_cache_is_recomputed(tiny_backbone, cache_root, spy):
    first = class_text_features(tiny_backbone, NAMES, TEMPLATES, cache_dir=cache_root)
    (path,) = (cache_root / "text").glob("*.pt")
    path.write_bytes(b"garbage")
    clear_memory_cache()
    again = class_text_features(tiny_backbone, NAMES, TEMPLATES, cache_dir=cache_root)
    assert len(spy) == 2
    torch.testing.assert_close(again.per_template, first.per_template, rtol=0, atol=1e-6)


def test_no_templates_is_an_error(tiny_backbone):
    with pytest.raises(ValueError, match="template"):
        class_text_features(tiny_backbone, NAMES, [])


# ---- ClassTextFeatures ---------------------------------------------------------------

def test_from_per_template_normalises_its_input():
    raw = torch.tensor([[[3.0, 4.0], [0.0, 2.0]],
                        [[1.0, 0.0], [-5.0, 0.0]]])
    tf = ClassTextFeatures.from_per_template(raw, ["a", "b"])
    e = torch.tensor([[[0.6, 0.8], [0.0, 1.0]],
                      [[1.0, 0.0], [-1.0, 0.0]]])
    torch.testing.assert_close(tf.per_template, e)
    torch.testing.assert_close(tf.mean, torch.tensor([[0.3, 0.9], [0.0, 0.0]]))
    norm = (0.3 ** 2 + 0.9 ** 2) ** 0.5
    torch.testing.assert_close(tf.normalized[0], torch.tensor([0.3 / norm, 0.9 / norm]))
    # ddof=1 with two templates: (x1 - x2)^2 / 2
    torch.testing.assert_close(tf.variance, torch.tensor([[0.18, 0.02], [2.0, 0.0]]))
    assert tf.per_template.dtype == torch.float32


def test_select_reorders_every_field():
    raw = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
    tf = ClassTextFeatures.from_per_template(raw, ["a", "b", "c", "d"])
    sub = tf.select([2, 0])
    assert sub.class_names == ("c", "a") and sub.n_classes == 2 and sub.dim == 5
    for field in ("per_template", "mean", "normalized", "variance"):
        full = getattr(tf, field)
        assert torch.equal(getattr(sub, field), torch.stack([full[2], full[0]]))


def test_from_per_template_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(C, L, D\)"):
        ClassTextFeatures.from_per_template(torch.randn(3, 5), ["a", "b", "c"])
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        ClassTextFeatures.from_per_template(torch.randn(3, 2, 5), ["a", "b"])
