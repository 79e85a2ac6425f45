"""The packaged `digits` encoder of the default run: identity, separable features, learning."""
import hashlib
import json

import numpy as np
import open_clip
import pytest
import torch

from clap4cl.encoders.backbones import PACKAGED_WEIGHTS, load_clip
from clap4cl.errors import UserError
from clap4cl.runner.config import default_config_path, load_config
from clap4cl.runner.experiment import run_experiment
from scenarios.datasets.digits import load_digits

WEIGHTS = PACKAGED_WEIGHTS[("tiny-vit", "digits")]
# Written by scripts/train_digits_clip.py; a retrained file must update this pin.
WEIGHTS_SHA256 = "847941f9023c0619afcb10d44efdbe2e2544d7df75b81bb5b79dcf16d8618bb8"


def test_shipped_file_is_the_small_pinned_image_tower():
    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size < 500_000
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == WEIGHTS_SHA256
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert all(k.startswith("visual.") for k in state) and "visual.conv1.weight" in state
    assert {v.dtype for v in state.values()} == {torch.float16}


def test_digits_tag_loads_offline_with_the_file_identity():
    clip = load_clip("tiny-vit", "digits")
    random_part = f"random:seed0:open_clip{open_clip.__version__}:torch{torch.__version__}"
    assert clip.identity == f"tiny-vit|package:digits:{WEIGHTS_SHA256}+{random_part}|fp32"
    assert clip.pretrained == "digits"
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    own = clip.model.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(own[key], value.float(), rtol=0, atol=0)
    # The text tower is the untrained seeded initialisation, the same as pretrained=None.
    random = load_clip("tiny-vit").model.state_dict()
    assert torch.equal(own["token_embedding.weight"], random["token_embedding.weight"])
    assert torch.equal(own["text_projection"], random["text_projection"])
    assert not torch.equal(own["visual.conv1.weight"], random["visual.conv1.weight"])


def test_digits_tag_is_listed_for_tiny_vit_only():
    with pytest.raises(UserError, match="valid tags are digits"):
        load_clip("tiny-vit", "openai")
    with pytest.raises(UserError, match="unknown pretrained tag 'digits' for tiny-rn"):
        load_clip("tiny-rn", "digits")


def digits_features(clip):
    splits = load_digits()

    def encode(dataset):
        images = torch.stack([clip.preprocess_test(dataset[i][0]) for i in range(len(dataset))])
        return clip.encode_images(images), torch.tensor(dataset.targets)

    return encode(splits.train), encode(splits.test)


def between_class_cosine(features, labels):
    cos = features @ features.T
    return cos[labels[:, None] != labels[None, :]].mean().item()


def test_digits_features_separate_the_classes_unlike_random_weights():
    (train, train_y), (test, test_y) = digits_features(load_clip("tiny-vit", "digits"))
    means = torch.nn.functional.normalize(
        torch.stack([train[train_y == c].mean(0) for c in range(10)]), dim=-1)
    ncm_accuracy = (test @ means.T).argmax(1).eq(test_y).float().mean().item()
    assert ncm_accuracy >= 0.9
    trained = between_class_cosine(test, test_y)
    (_, _), (random_test, _) = digits_features(load_clip("tiny-vit"))
    random = between_class_cosine(random_test, test_y)
    assert random > 0.95 and trained < 0.2


def test_text_tower_does_not_solve_digits_zero_shot():
    clip = load_clip("tiny-vit", "digits")
    (_, _), (test, test_y) = digits_features(clip)
    splits = load_digits()
    prompts = clip.encode_texts([splits.templates[1].format(n) for n in splits.class_names])
    zero_shot = (test @ prompts.T).argmax(1).eq(test_y).float().mean().item()
    assert zero_shot < 0.3
    assert between_class_cosine(prompts, torch.arange(10)) < 0.9  # yet prompts are distinct


@pytest.fixture(scope="module")
def default_runs(default_cli_run, tmp_path_factory):
    """The default run (CLAP, shared with the CLI tests) and the same config's zero-shot."""
    code, clap_root = default_cli_run
    assert code == 0
    config = load_config(default_config_path())
    assert config["backbone"]["pretrained"] == "digits" and config["dataset"]["name"] == "digits"
    assert config["method"] == "clap"
    root = tmp_path_factory.mktemp("default_encoder")
    config["method"] = "zeroshot"
    config["logging"].update(progress=False, tensorboard=False)
    config["cache"]["dir"] = str(root / "cache")
    return {"clap": json.loads((clap_root / "run" / "results.json").read_text()),
            "zeroshot": run_experiment(config, root / "zeroshot")}


def test_default_run_learns_and_beats_zero_shot(default_runs):
    clap, zeroshot = default_runs["clap"], default_runs["zeroshot"]
    assert clap["last_accuracy"] >= 0.7
    assert clap["last_accuracy"] >= zeroshot["last_accuracy"] + 0.4
    # Every experience's classes are still recognised at the end (no total forgetting).
    assert min(np.asarray(clap["accuracy_matrix"][-1], dtype=float)) >= 0.4
