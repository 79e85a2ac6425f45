"""Configuration: defaults, YAML merge, --set overrides and one-line errors."""
import pytest

from clap4cl.runner.config import (CHOICES, defaults, dump, get, load_config, parse_override, read_yaml,
                            validate)
from clap4cl.errors import ConfigError, UserError


def config_error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(*args, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_load_and_validate():
    config = load_config()
    assert config == defaults()
    validate(config)
    assert config["method"] == "clap"
    assert config["backbone"] == {"arch": "tiny-vit", "pretrained": None, "precision": "fp32",
                                  "device": "cpu"}
    assert config["dataset"]["n_experiences"] == 5 and config["clap"]["lr"] == 0.0016
    assert config["plugins"] == [] and config["dataset"]["options"] == {}
    # defaults() hands out independent copies
    defaults()["dataset"]["n_experiences"] = 99
    assert defaults()["dataset"]["n_experiences"] == 5


def test_yaml_file_merges_over_defaults(tmp_path):
    path = write(tmp_path, "method: clap\ndataset:\n  name: cifar100\n  n_experiences: 10\n"
                           "clap:\n  epochs: 1\nplugins: [{name: cml, weight: 1.0}]\n")
    config = load_config(path)
    assert config["method"] == "clap"
    assert config["dataset"]["name"] == "cifar100" and config["dataset"]["n_experiences"] == 10
    # sibling keys of a merged section keep their defaults
    assert config["dataset"]["root"] is None and config["dataset"]["download"] is False
    assert config["clap"]["epochs"] == 1 and config["clap"]["finetune_epochs"] == 2
    assert config["plugins"] == [{"name": "cml", "weight": 1.0}]
    # overrides apply after the file
    config = load_config(path, ["dataset.n_experiences=4"])
    assert config["dataset"]["n_experiences"] == 4 and config["dataset"]["name"] == "cifar100"


def test_empty_yaml_file_is_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "# nothing\n")) == defaults()


def test_set_values_are_parsed_as_yaml():
    config = load_config(overrides=["dataset.n_experiences=3", "backbone.pretrained=null",
                                    "dataset.class_order=[1, 0, 2]", "clap.beta=2.5",
                                    "eval.novelty=false", "backbone.arch=ViT-B-16",
                                    "seed=7", "dataset.options={n_train: 4}"])
    assert config["dataset"]["n_experiences"] == 3 and type(config["dataset"]["n_experiences"]) is int
    assert config["backbone"]["pretrained"] is None
    assert config["dataset"]["class_order"] == [1, 0, 2]
    assert config["clap"]["beta"] == 2.5 and config["eval"]["novelty"] is False
    assert config["backbone"]["arch"] == "ViT-B-16" and config["seed"] == 7
    assert config["dataset"]["options"] == {"n_train": 4}
    assert parse_override("dataset.class_order=[1,2]") == ("dataset.class_order", [1, 2])
    assert parse_override(" backbone.pretrained = ") == ("backbone.pretrained", None)
    assert parse_override("cache.dir=/tmp/a=b") == ("cache.dir", "/tmp/a=b")
    assert parse_override("backbone.pretrained=weights.pt") == ("backbone.pretrained", "weights.pt")


def test_override_without_equals_sign():
    msg = config_error(overrides=["dataset.n_experiences"])
    assert "'dataset.n_experiences'" in msg and "key=value" in msg


def test_int_is_accepted_for_float_keys():
    config = load_config(overrides=["clap.lr=1", "clap.beta=0"])
    assert config["clap"]["lr"] == 1.0 and type(config["clap"]["lr"]) is float
    assert type(config["clap"]["beta"]) is float


def test_unknown_top_level_key(tmp_path):
    msg = config_error(write(tmp_path, "methd: clap\n"))
    assert "'methd'" in msg
    for key in defaults():
        assert key in msg
    msg = config_error(overrides=["methd=clap"])
    assert "'methd'" in msg and "method" in msg and "backbone" in msg


def test_unknown_nested_key(tmp_path):
    msg = config_error(write(tmp_path, "dataset:\n  n_experience: 3\n"))
    assert "'dataset.n_experience'" in msg
    for key in defaults()["dataset"]:
        assert f"dataset.{key}" in msg
    msg = config_error(overrides=["clap.epoch=3"])
    assert "'clap.epoch'" in msg and "clap.epochs" in msg and "clap.mc_samples" in msg
    # a key below a leaf value
    msg = config_error(overrides=["method.name=clap"])
    assert "'method.name'" in msg


def test_wrong_types():
    msg = config_error(overrides=["dataset.n_experiences=five"])
    assert "dataset.n_experiences" in msg and "int" in msg and "'five'" in msg
    msg = config_error(overrides=["dataset.n_experiences=true"])
    assert "dataset.n_experiences must be int" in msg and "bool" in msg
    msg = config_error(overrides=["clap.vga=1"])
    assert "clap.vga must be bool" in msg
    msg = config_error(overrides=["clap.lr=fast"])
    assert "clap.lr must be float" in msg
    msg = config_error(overrides=["clap.lr=true"])
    assert "clap.lr must be float" in msg
    msg = config_error(overrides=["seed=abc"])
    assert "seed must be int or null" in msg
    msg = config_error(overrides=["dataset.class_order=3"])
    assert "dataset.class_order must be list or null" in msg
    msg = config_error(overrides=["backbone.arch=null"])
    assert "backbone.arch must be str" in msg


def test_section_replaced_by_a_scalar_is_an_error(tmp_path):
    msg = config_error(write(tmp_path, "dataset: 3\n"))
    assert "dataset must be a mapping" in msg and "dataset.n_experiences" in msg and "int 3" in msg
    msg = config_error(overrides=["clap=null"])
    assert "clap must be a mapping" in msg


def test_set_of_a_section_merges_into_it():
    config = load_config(overrides=["dataset={name: cifar10, n_experiences: 2}"])
    assert config["dataset"]["name"] == "cifar10" and config["dataset"]["n_experiences"] == 2
    assert config["dataset"]["root"] is None  # siblings keep their defaults
    msg = config_error(overrides=["dataset={nme: cifar10}"])
    assert "'dataset.nme'" in msg and "dataset.name" in msg


def test_invalid_choice_lists_the_choices():
    msg = config_error(overrides=["eval.context=foo"])
    assert "eval.context" in msg and "'foo'" in msg
    assert "per_image, mixed, reference" in msg
    msg = config_error(overrides=["method=clpa"])
    assert ", ".join(CHOICES["method"]) in msg


def test_ranges():
    assert "must be positive" in config_error(overrides=["dataset.n_experiences=0"])
    assert "must not be negative" in config_error(overrides=["clap.epochs=-1"])
    assert load_config(overrides=["clap.epochs=0"])["clap"]["epochs"] == 0


def test_plugins_must_be_a_list():
    assert "plugins must be a list" in config_error(overrides=["plugins=[3]"])
    assert "plugins must be list" in config_error(overrides=["plugins={name: cml}"])


def test_missing_config_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    msg = config_error(missing)
    assert missing in msg and "not found" in msg


def test_invalid_yaml_names_the_line(tmp_path):
    msg = config_error(write(tmp_path, "method: clap\ndataset: [unclosed\n"))
    assert "not valid YAML" in msg and "line" in msg


def test_non_mapping_yaml(tmp_path):
    with pytest.raises(ConfigError, match="must hold a mapping"):
        read_yaml(write(tmp_path, "- a\n- b\n"))


def test_config_errors_are_user_errors():
    assert issubclass(ConfigError, UserError)


def test_dump_round_trips(tmp_path):
    config = load_config(overrides=["dataset.class_order=[2, 0, 1]", "method=clap"])
    again = load_config(write(tmp_path, dump(config)))
    assert again == config
    assert list(again) == list(defaults())  # key order preserved
    assert get(again, "dataset.class_order") == [2, 0, 1]
