"""Folder datasets (image_folder, ImageNet-R, ImageNet-100, CUB-200) on tiny generated trees."""
import numpy as np
import pytest
from PIL import Image

from clap4cl.errors import DataNotFoundError, UserError
from scenarios.datasets.cub import CUB_TEMPLATES, cub_class_name, load_cub200
from scenarios.datasets.folders import (GENERIC_TEMPLATES, imagenet_templates,
                                        imagenet_wnid_to_name, load_image_folder, load_imagenet100)
from scenarios.datasets.imagenet_r import load_imagenet_r


def write_png(path, value, size=(6, 5)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, color=value).save(path)


def write_class_tree(root, classes, per_class):
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_png(root / name / f"img_{i:02d}.png", 10 * c + i)
    return root


def test_single_folder_is_split_deterministically(tmp_path):
    root = write_class_tree(tmp_path / "data", ["cat", "dog", "sea_lion"], 5)
    (root / "dog" / "notes.txt").write_text("not an image")
    a, b = load_image_folder(root), load_image_folder(root)
    assert a.class_names == ["cat", "dog", "sea lion"]
    assert a.templates == GENERIC_TEMPLATES
    assert (len(a.train), len(a.test)) == (12, 3)  # 20 % of 5 = 1 test image per class
    assert a.train.paths == b.train.paths and a.test.paths == b.test.paths
    assert a.fingerprint == b.fingerprint
    assert not set(a.train.paths) & set(a.test.paths)
    image, label = a.test[0]
    assert image.mode == "RGB" and image.size == (6, 5) and label == 0
    other_seed = load_image_folder(root, split_seed=1)
    assert other_seed.fingerprint != a.fingerprint


def test_split_of_a_class_does_not_depend_on_other_classes(tmp_path):
    full = load_image_folder(write_class_tree(tmp_path / "full", ["a", "b", "c"], 10))
    part = load_image_folder(write_class_tree(tmp_path / "part", ["b"], 10))
    names = lambda paths: sorted(p.split("/")[-1] for p in paths if "/b/" in p)  # noqa: E731
    assert names(full.test.paths) == names(part.test.paths)


def test_train_and_test_subfolders_are_used_as_given(tmp_path):
    write_class_tree(tmp_path / "train", ["x", "y"], 3)
    write_class_tree(tmp_path / "test", ["x", "y"], 2)
    (tmp_path / "classnames.txt").write_text("x the letter x\ny why_not\n")
    splits = load_image_folder(tmp_path, templates=["an image of {}."])
    assert (len(splits.train), len(splits.test)) == (6, 4)
    assert splits.class_names == ["the letter x", "why not"]
    assert splits.templates == ("an image of {}.",)


def test_test_class_without_training_images_is_an_error(tmp_path):
    write_class_tree(tmp_path / "train", ["x"], 2)
    write_class_tree(tmp_path / "val", ["x", "z"], 1)
    with pytest.raises(DataNotFoundError, match="z"):
        load_image_folder(tmp_path)


def test_bad_classnames_file_is_a_user_error(tmp_path):
    write_class_tree(tmp_path, ["a", "b"], 3)
    (tmp_path / "classnames.txt").write_text("only one\n")
    with pytest.raises(UserError, match="classnames.txt"):
        load_image_folder(tmp_path)


@pytest.mark.parametrize("loader", [load_image_folder, load_imagenet_r, load_imagenet100,
                                    load_cub200])
def test_missing_or_empty_root_says_what_layout_is_expected(tmp_path, loader):
    for root in (None, tmp_path / "absent", tmp_path):
        with pytest.raises(DataNotFoundError) as info:
            loader(root)
        message = str(info.value)
        assert "\n" not in message and ("root" in message or "folder" in message)


def test_imagenet_templates_are_format_strings():
    templates = imagenet_templates()
    assert len(templates) == 80 and all("{}" in t for t in templates)
    assert templates[0].format("dog") == "a bad photo of a dog."


def test_wnids_get_open_clip_imagenet_names():
    names = imagenet_wnid_to_name()
    assert names["n01440764"] == "tench" and names["n01443537"] == "goldfish"
    assert len(names) == 1000


IMAGENET_R_WNIDS = ["n01443537", "n01484850"]  # goldfish, great white shark


def test_imagenet_r_uses_split_lists_keyed_by_wnid_and_file(tmp_path):
    for wnid in IMAGENET_R_WNIDS:
        for i in range(3):
            write_png(tmp_path / wnid / f"art_{i}.png", i)
    # the lists say train/... and test/... although the files lie in <wnid>/ (docs/clap4clip.md R26)
    (tmp_path / "imagenetr_train.txt").write_text(
        "train/n01443537/art_0.png 0\ntrain/n01443537/art_1.png 0\ntrain/n01484850/art_2.png 1\n")
    (tmp_path / "imagenetr_test.txt").write_text(
        "test/n01443537/art_2.png 0\ntest/n01484850/art_0.png 1\n")
    splits = load_imagenet_r(tmp_path)
    assert splits.class_names == ["goldfish", "great white shark"]
    assert splits.train.targets == [0, 0, 1] and splits.test.targets == [0, 1]
    assert splits.test.paths[1].endswith("n01484850/art_0.png")
    assert len(splits.templates) == 80


def test_imagenet_r_list_entry_without_file_is_reported(tmp_path):
    write_png(tmp_path / "n01443537" / "a.png", 1)
    (tmp_path / "imagenetr_train.txt").write_text("train/n01443537/a.png 0\n")
    (tmp_path / "imagenetr_test.txt").write_text("test/n01443537/missing.png 0\n")
    with pytest.raises(DataNotFoundError, match="n01443537/missing.png"):
        load_imagenet_r(tmp_path)


def test_imagenet_r_without_lists_splits_wnid_folders(tmp_path):
    write_class_tree(tmp_path, IMAGENET_R_WNIDS, 5)
    splits = load_imagenet_r(tmp_path)
    assert (len(splits.train), len(splits.test)) == (8, 2)
    assert splits.class_names == ["goldfish", "great white shark"]


def test_imagenet100_reads_train_and_val(tmp_path):
    write_class_tree(tmp_path / "train", IMAGENET_R_WNIDS, 2)
    write_class_tree(tmp_path / "val", IMAGENET_R_WNIDS, 1)
    splits = load_imagenet100(tmp_path)
    assert (len(splits.train), len(splits.test)) == (4, 2)
    assert splits.class_names == ["goldfish", "great white shark"]


def write_cub(root):
    """CUB_200_2011 layout: 3 classes, image 0 of each class in train, image 1 in test."""
    folder = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, split, labels = [], [], []
    for c, cls in enumerate(classes, start=1):
        (folder / "images" / cls).mkdir(parents=True)
        for i in range(2):
            image_id = 2 * (c - 1) + i + 1
            rel = f"{cls}/{cls.split('.')[1]}_{i}.jpg"
            Image.new("RGB", (4, 4), color=(c * 40, i * 90, 0)).save(folder / "images" / rel)
            images.append(f"{image_id} {rel}")
            split.append(f"{image_id} {1 - i}")
            labels.append(f"{image_id} {c}")
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "classes.txt").write_text("\n".join(f"{i} {c}" for i, c in enumerate(classes, 1)))
    return root


def test_cub200_official_split_and_clean_names(tmp_path):
    root = write_cub(tmp_path)
    for given in (root, root / "CUB_200_2011"):
        splits = load_cub200(given)
        assert splits.class_names == ["Black footed Albatross", "Laysan Albatross",
                                      "Sooty Albatross"]
        assert splits.train.targets == [0, 1, 2] and splits.test.targets == [0, 1, 2]
        assert splits.templates == CUB_TEMPLATES == ("a photo of a {}, a type of bird.",)
        image, _ = splits.test[1]
        assert np.allclose(np.asarray(image)[0, 0], [80, 90, 0], atol=4)  # JPEG
    assert cub_class_name("200.Common_Yellowthroat") == "Common Yellowthroat"


def test_cub200_missing_image_is_reported(tmp_path):
    root = write_cub(tmp_path)
    next((root / "CUB_200_2011" / "images").rglob("*.jpg")).unlink()
    with pytest.raises(DataNotFoundError, match="missing"):
        load_cub200(root)
