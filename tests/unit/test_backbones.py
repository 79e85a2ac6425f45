"""Frozen open_clip backbones: weights from files, frozen encoders, preprocessing, bad input."""
import hashlib
import logging

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from clap4cl.encoders import backbones, weights
from clap4cl.encoders.backbones import TINY_ARCHITECTURES, load_clip
from clap4cl.errors import UserError

TEXTS = ["a photo of a cat.", "a photo of a dog.", "a drawing of a ship."]


@pytest.fixture(scope="module")
def images():
    return torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(123))


@pytest.fixture(scope="module")
def seed1_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny_seed1.pt"
    torch.save(load_clip("tiny-vit", seed=1).model.state_dict(), path)
    return path


def test_weights_load_from_a_checkpoint_file(seed1_checkpoint, tiny_backbone, images):
    from_file = load_clip("tiny-vit", str(seed1_checkpoint))
    seed1 = load_clip("tiny-vit", seed=1)
    torch.testing.assert_close(from_file.encode_images(images), seed1.encode_images(images),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(from_file.encode_texts(TEXTS), seed1.encode_texts(TEXTS),
                               rtol=0, atol=1e-6)
    # ... and they are not simply the default (seed 0) random weights
    diff = (from_file.encode_images(images) - tiny_backbone.encode_images(images)).abs().max()
    assert diff > 1e-2
    assert from_file.pretrained == str(seed1_checkpoint)


def test_identity_names_the_weights_file_by_content_hash(seed1_checkpoint, tiny_backbone):
    sha = hashlib.sha256(seed1_checkpoint.read_bytes()).hexdigest()
    from_file = load_clip("tiny-vit", str(seed1_checkpoint))
    assert f"file:{sha}" in from_file.identity
    assert from_file.identity != tiny_backbone.identity
    assert from_file.identity != load_clip("tiny-vit", seed=1).identity
    # random weights: the seed is part of the identity, the precision too
    assert "seed0" in tiny_backbone.identity
    assert load_clip("tiny-vit", seed=1).identity != tiny_backbone.identity
    assert load_clip("tiny-vit", precision="fp16").identity != tiny_backbone.identity
    # same file content under another name -> same weights part of the identity
    copy = seed1_checkpoint.with_name("copy.pt")
    copy.write_bytes(seed1_checkpoint.read_bytes())
    assert load_clip("tiny-vit", str(copy)).identity == from_file.identity


def test_image_features_are_normalised_float32_and_deterministic(tiny_backbone, images):
    feats = tiny_backbone.encode_images(images)
    assert feats.shape == (5, tiny_backbone.embed_dim) == (5, 64)
    assert feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(5), rtol=0, atol=1e-5)
    again = load_clip("tiny-vit").encode_images(images)
    assert torch.equal(feats, again)
    # different images give different features (the encoder is not constant)
    assert (feats[0] - feats[1]).abs().max() > 1e-3


def test_forward_is_encode_images(tiny_backbone, images):
    assert torch.equal(tiny_backbone(images), tiny_backbone.encode_images(images))


def test_text_features_shapes_and_norms(tiny_backbone):
    feats = tiny_backbone.encode_texts(TEXTS)
    assert feats.shape == (3, 64) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3), rtol=0, atol=1e-5)
    assert tiny_backbone.encode_texts([]).shape == (0, 64)
    # batching does not change the result, and order is kept
    batched = tiny_backbone.encode_texts(TEXTS, batch_size=2)
    torch.testing.assert_close(batched, feats, rtol=0, atol=1e-5)
    single = tiny_backbone.encode_texts([TEXTS[2]])
    torch.testing.assert_close(single[0], feats[2], rtol=0, atol=1e-5)


def test_model_attributes(tiny_backbone):
    assert tiny_backbone.embed_dim == 64 and tiny_backbone.image_size == 32
    # open_clip initialises logit_scale to log(1 / 0.07)
    assert tiny_backbone.logit_scale == pytest.approx(1 / 0.07, rel=1e-6)
    rn = load_clip("tiny-rn")
    assert rn.embed_dim == 64
    assert rn.encode_images(torch.zeros(2, 3, 32, 32)).shape == (2, 64)


def test_backbone_is_frozen_and_stays_in_eval_mode(tiny_backbone):
    assert all(not p.requires_grad for p in tiny_backbone.parameters())
    assert sum(1 for _ in tiny_backbone.parameters()) > 0
    tiny_backbone.train()
    assert not tiny_backbone.training
    assert not any(m.training for m in tiny_backbone.modules())
    tiny_backbone.train(True)
    assert not any(m.training for m in tiny_backbone.modules())


def test_train_preprocessing_is_test_plus_flip_before_tensor_conversion(tiny_backbone):
    test_steps = list(tiny_backbone.preprocess_test.transforms)
    train_steps = list(tiny_backbone.preprocess_train.transforms)
    assert len(train_steps) == len(test_steps) + 1
    flip_at = next(i for i, s in enumerate(train_steps) if isinstance(s, T.RandomHorizontalFlip))
    assert flip_at > 0
    assert "ToTensor" in type(train_steps[flip_at + 1]).__name__
    assert [repr(s) for s in train_steps[:flip_at] + train_steps[flip_at + 1:]] == \
        [repr(s) for s in test_steps]
    assert train_steps[flip_at].p == 0.5


def test_train_preprocessing_output_is_the_test_tensor_or_its_mirror(tiny_backbone):
    # An asymmetric 48x40 image: resize and centre crop happen before the flip, so the
    # augmented tensor is exactly the test tensor or the test tensor flipped on width
    # (the feature cache's "flip" view relies on this).
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    test = tiny_backbone.preprocess_test(img)
    assert test.shape == (3, 32, 32)
    mirrored = torch.flip(test, dims=[-1])
    assert not torch.equal(test, mirrored)
    seen = set()
    torch.manual_seed(0)
    for _ in range(40):
        out = tiny_backbone.preprocess_train(img)
        if torch.allclose(out, test, atol=1e-6):
            seen.add("original")
        elif torch.allclose(out, mirrored, atol=1e-6):
            seen.add("flip")
        else:
            pytest.fail("train preprocessing produced neither the test tensor nor its mirror")
    assert seen == {"original", "flip"}


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_low_precision_returns_float32_normalised_features_close_to_fp32(
        precision, dtype, tiny_backbone, images):
    low = load_clip("tiny-vit", precision=precision)
    assert low.dtype == dtype and low.precision == precision
    img = low.encode_images(images)
    txt = low.encode_texts(TEXTS)
    for feats, ref in ((img, tiny_backbone.encode_images(images)),
                       (txt, tiny_backbone.encode_texts(TEXTS))):
        assert feats.dtype == torch.float32
        torch.testing.assert_close(feats.norm(dim=-1), torch.ones(len(feats)), rtol=0, atol=1e-5)
        cosine = (feats * ref).sum(-1)
        assert cosine.min() > 0.99


def test_unknown_architecture_is_a_one_line_user_error_listing_tiny_names():
    with pytest.raises(UserError) as err:
        load_clip("tiny-vitt")
    msg = str(err.value)
    assert "\n" not in msg and "'tiny-vitt'" in msg
    assert set(TINY_ARCHITECTURES) >= {"tiny-vit", "tiny-rn"}
    for name in TINY_ARCHITECTURES:
        assert name in msg


def test_unknown_tag_lists_valid_tags_without_creating_a_model(monkeypatch):
    def no_create(*args, **kwargs):
        raise AssertionError("open_clip.create_model must not run (it could download)")

    monkeypatch.setattr(open_clip, "create_model", no_create)
    with pytest.raises(UserError) as err:
        load_clip("ViT-B-32", "nonexistent")
    msg = str(err.value)
    assert "\n" not in msg and "'nonexistent'" in msg and "ViT-B-32" in msg
    for tag in open_clip.list_pretrained_tags_by_model("ViT-B-32"):
        assert tag in msg
    assert "openai" in msg


def test_missing_checkpoint_path_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("created a model"))
    for missing in (str(tmp_path / "nope.pt"), str(tmp_path / "dir" / "weights"), "./weights"):
        with pytest.raises(UserError) as err:
            load_clip("tiny-vit", missing)
        assert "does not exist" in str(err.value) and missing in str(err.value)
        assert "\n" not in str(err.value)


def test_unknown_precision_is_a_user_error():
    with pytest.raises(UserError, match="fp32, fp16, bf16"):
        load_clip("tiny-vit", precision="fp8")


def test_file_hash_is_recomputed_when_the_file_changes(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    assert weights.file_sha256(path) == hashlib.sha256(b"abc").hexdigest()
    path.write_bytes(b"abcd")
    assert weights.file_sha256(path) == hashlib.sha256(b"abcd").hexdigest()


def test_loading_random_weights_leaves_the_root_logger_alone(monkeypatch):
    root = logging.getLogger()
    records, levels_inside = [], []

    class Capture(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    create = open_clip.create_model

    def create_and_look(*args, **kwargs):
        levels_inside.append(root.level)
        return create(*args, **kwargs)

    monkeypatch.setattr(backbones.open_clip, "create_model", create_and_look)
    handler = Capture(level=logging.DEBUG)
    previous_level, previous_filters = root.level, list(root.filters)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        load_clip("tiny-vit")
        logging.warning("a warning of the user's own")
    finally:
        root.removeHandler(handler)
        level_after = root.level
        root.setLevel(previous_level)
    assert levels_inside == [logging.INFO] and level_after == logging.INFO
    assert root.filters == previous_filters
    assert not any("initialized randomly" in message for message in records)
    assert "a warning of the user's own" in records
