"""Every list of allowed values has one registry, and the validator, the CLI help,
defaults.yaml's comments and docs/choices.md all know every name in it."""
import re
from importlib import resources
from pathlib import Path

import pytest

from clap4cl.errors import ConfigError
from clap4cl.runner.config import CHOICES, LIST_CHOICES, defaults, load_config

DOCS = Path(__file__).resolve().parents[2] / "docs" / "choices.md"
# Keys whose names are another key's: their comment and docs row point there.
SAME_AS = {"eval.novelty_dataset": "dataset.name"}


def plugin_option_registries():
    from clap4cl.evaluation.attribution import SCOPES, TARGET_LOGITS
    from clap4cl.models.choices import PAIR_POLICIES
    from scenarios.datasets.two_modality import B_MODES
    from strategies.plugins import cml, mad, mar, modality_dropout

    return {
        "plugins[modality_dropout].policy": modality_dropout.POLICIES,
        "plugins[cml].pairs": PAIR_POLICIES,
        "plugins[cml].gate": cml.GATES,
        "plugins[cml].confidence": cml.CONFIDENCES,
        "plugins[mar].score": mar.SCORES,
        "plugins[mar].candidates": mar.CANDIDATES,
        "plugins[mad].weighting": mad.WEIGHTINGS,
        "plugins[mad].weight_axis": mad.AXES,
        "plugins[attribution].target_logit": TARGET_LOGITS,
        "plugins[attribution].scope": SCOPES,
        "dataset.options.b_mode": B_MODES,
    }


def all_registries():
    from clap4cl.evaluation.scores import NOVELTY_SCORES

    return {**CHOICES, **{f"{k}[].name": v for k, v in LIST_CHOICES.items()},
            **plugin_option_registries(), "novelty score": tuple(NOVELTY_SCORES)}


def docs_rows():
    """{key: set of values} from the Markdown tables of docs/choices.md."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not line.startswith("|") or set(cells[0]) <= set("-"):
            continue
        key = re.sub(r"`([^`]*)`.*", r"\1", cells[0]) if cells[0].startswith("`") else cells[0]
        rows.setdefault(key, set()).update(re.findall(r"`([^`]+)`", cells[1]))
    return rows


def defaults_comment(dotted: str) -> str:
    """The comment lines right above ``dotted``'s line in defaults.yaml (its section's too)."""
    lines = resources.files("clap4cl.runner").joinpath("defaults.yaml").read_text().splitlines()
    parts, depth, found = dotted.split("."), 0, None
    for i, line in enumerate(lines):
        if re.match(rf"^{'  ' * depth}{re.escape(parts[depth])}:", line):
            if depth == len(parts) - 1:
                found = i
                break
            depth += 1
    assert found is not None, f"{dotted} is not in defaults.yaml"
    comment = []
    for line in reversed(lines[:found]):
        if not line.strip().startswith("#"):
            break
        comment.append(line.strip().lstrip("#"))
    return " ".join(reversed(comment))


def mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


@pytest.mark.parametrize("key", sorted({**CHOICES, **LIST_CHOICES}))
def test_every_name_is_in_defaults_comments(key):
    names = CHOICES.get(key) or LIST_CHOICES[key]
    comment = defaults_comment(key)
    if key in SAME_AS:
        assert names == CHOICES[SAME_AS[key]]
        assert mentions(comment, SAME_AS[key]), f"defaults.yaml's comment of {key} should say " \
                                                f"it takes a {SAME_AS[key]} value"
        return
    missing = [n for n in names if not mentions(comment, n)]
    assert not missing, f"defaults.yaml's comment of {key} does not mention {missing}"


@pytest.mark.parametrize("key", sorted(all_registries()))
def test_every_name_is_in_docs_choices(key):
    rows = docs_rows()
    assert key in rows, f"docs/choices.md has no row for {key}"
    names = all_registries()[key]
    if key in SAME_AS:
        assert rows[key] == {SAME_AS[key]}, f"docs/choices.md: {key} should refer to {SAME_AS[key]}"
        return
    missing = [n for n in names if n not in rows[key]]
    assert not missing, f"docs/choices.md does not list {missing} for {key}"
    unknown = sorted(rows[key] - set(names))
    assert not unknown, f"docs/choices.md lists {unknown} for {key}, which the registry lacks"


def test_docs_check_would_catch_a_missing_name(monkeypatch):
    """The check above fails for a name that is not documented (it is not vacuous)."""
    monkeypatch.setitem(CHOICES, "memory.selector", (*CHOICES["memory.selector"], "brand_new"))
    with pytest.raises(AssertionError, match="brand_new"):
        test_every_name_is_in_docs_choices("memory.selector")
    with pytest.raises(AssertionError, match="brand_new"):
        test_every_name_is_in_defaults_comments("memory.selector")


def test_choices_are_the_implementations_registries():
    """CHOICES reads the registries; it does not keep its own copies."""
    from clap4cl.encoders.backbones import PRECISIONS
    from clap4cl.models.clap import CONTEXTS, LANGUAGE_INIT_CLASSES
    from clap4cl.models.multi_encoder import FILLS, FUSIONS
    from clap4cl.runner.assemble import METHODS
    from scenarios.registry import available_datasets
    from strategies.exemplars import POLICIES
    from strategies.plugins.registry import PLUGINS
    from strategies.selectors import SELECTORS

    assert CHOICES["method"] is METHODS
    assert CHOICES["backbone.precision"] is PRECISIONS
    assert CHOICES["clap.train_context"] is CONTEXTS
    assert CHOICES["clap.language_init_classes"] is LANGUAGE_INIT_CLASSES
    assert CHOICES["multi_encoder.fusion"] is FUSIONS
    assert CHOICES["multi_encoder.fill"] is FILLS
    assert CHOICES["memory.policy"] is POLICIES
    assert CHOICES["memory.selector"] == tuple(SELECTORS)
    assert CHOICES["dataset.name"] == tuple(available_datasets())
    assert LIST_CHOICES["plugins"] == tuple(PLUGINS)
    from scenarios.choices import BAD_IMAGE_POLICIES, CACHE_VERIFY

    assert CHOICES["dataset.on_bad_image"] is BAD_IMAGE_POLICIES
    assert CHOICES["cache.verify"] is CACHE_VERIFY


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_validation_rejects_a_value_outside_the_registry(key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{key}=not_a_choice"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{key} = 'not_a_choice' is not valid: choose one of ")
    assert message.endswith(", ".join(CHOICES[key]))


def test_validation_accepts_every_registered_value():
    for key, names in CHOICES.items():
        for name in names:
            overrides = [f"{key}={name}"]
            if (key, name) in (("method", "multi_encoder"), ("dataset.name", "two_modality")):
                overrides = ["method=multi_encoder", "dataset.name=two_modality"]
            assert load_config(None, overrides)[key.split(".")[0]] is not None


def test_unknown_plugin_name_is_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"^plugins: unknown plugin 'cmll': choose from "
                                          r"modality_dropout, cml, mar, mad, attribution$"):
        load_config(None, ["plugins=[{name: cmll}]"])


def test_registries_are_read_without_torch():
    import subprocess
    import sys

    code = ("import sys; import clap4cl.runner.config, strategies.choices, scenarios.registry; "
            "heavy = [m for m in ('torch', 'avalanche', 'open_clip', 'matplotlib') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_help_lists_every_choice(capsys):
    from clap4cl.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for key, names in {**CHOICES, **{f"{k}[].name": v for k, v in LIST_CHOICES.items()}}.items():
        assert f"{key} {', '.join(names)}" in text, key


def test_defaults_hold_registered_values():
    config = defaults()
    for key, names in CHOICES.items():
        value = config
        for part in key.split("."):
            value = value[part]
        assert value is None or value in names, key
