"""The regularisers' measurable effects on the two-modality stream (docs/multimodal-plugins.md)."""
import warnings

import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.training.plugins import EvaluationPlugin

import scenarios
from clap4cl.evaluation.modality_metrics import AttributionShareMetric, modality_plugin_metrics
from clap4cl.models.multi_encoder import MultiEncoderClassifier
from strategies import (AttributionRegPlugin, CMLPlugin, MADPlugin, MARPlugin,
                        ModalityDropoutPlugin)
from strategies.multimodal_step import MultimodalNaive
from test_multimodal import counting_encode

SEEDS = (0, 1, 2)


def train(plugins, *, seed, fusion="concat", epochs=20, n_experiences=1, metrics=(),
          on_model=None, **data):
    torch.manual_seed(seed)
    benchmark = scenarios.class_incremental("two_modality", n_experiences=n_experiences,
                                            seed=seed, **data)
    model = MultiEncoderClassifier(benchmark.input_dims, 4, fusion=fusion)
    if on_model is not None:
        on_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = EvaluationPlugin(accuracy_metrics(stream=True), *metrics, loggers=[])
    strategy = MultimodalNaive(model=model, optimizer=torch.optim.Adam(model.parameters(), 3e-3),
                     criterion=torch.nn.CrossEntropyLoss(), train_mb_size=128,
                     train_epochs=epochs, eval_mb_size=512, plugins=list(plugins),
                     evaluator=evaluator)
    results = {}
    for step, experience in enumerate(benchmark.train_stream):
        strategy.train(experience)
        results = strategy.eval(benchmark.test_stream[: step + 1])
    short = {k.split("/eval_phase")[0] + k.split("test_stream")[1]: v
             for k, v in results.items() if "eval_phase" in k}
    return short, strategy


@pytest.mark.parametrize("seed", SEEDS)
def test_cml_at_least_halves_the_violation_rate_without_losing_accuracy(seed):
    data = dict(b_mode="noise", sigma_a=1.5)
    metrics = modality_plugin_metrics(experience=False, loss_terms=False)
    base, _ = train([ModalityDropoutPlugin(seed=seed)], seed=seed, metrics=metrics, **data)
    metrics = modality_plugin_metrics(experience=False, loss_terms=False)
    cml, _ = train([ModalityDropoutPlugin(seed=seed), CMLPlugin(weight=5)], seed=seed,
                   metrics=metrics, **data)
    assert base["VRR_Stream"] > 0.1                               # the baseline does violate
    assert cml["VRR_Stream"] <= 0.5 * base["VRR_Stream"]
    assert cml["Top1_Acc_Stream/Task000"] >= base["Top1_Acc_Stream/Task000"] - 0.02
    # violations concentrate where the principle's assumption fails: removing the noise
    from_noise = base["VRR_Stream/without_b"] / (base["VRR_Stream/without_a"] + base["VRR_Stream/without_b"])
    assert from_noise >= 0.8


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_attribution_regulariser_brings_the_informative_share_to_the_target(seed):
    data = dict(b_mode="weak", sigma_a=0.8, sigma_b=2.5)
    base, _ = train([], seed=seed, fusion="late", epochs=30, metrics=[AttributionShareMetric()], **data)
    reg, _ = train([AttributionRegPlugin(weight=1.0)], seed=seed, fusion="late", epochs=30,
                   metrics=[AttributionShareMetric()], **data)
    assert base["AttributionShare_Stream/a"] >= 0.55                # a dominates without it
    assert abs(reg["AttributionShare_Stream/a"] - 0.5) <= 0.05
    assert reg["Top1_Acc_Stream/Task000"] >= base["Top1_Acc_Stream/Task000"] - 0.02


@pytest.mark.parametrize("seed", SEEDS)
def test_mar_mining_on_held_out_training_data_picks_the_weak_modality(seed):
    data = dict(b_mode="weak", sigma_a=0.8, sigma_b=2.5)
    mar = MARPlugin(weight=1.0, holdout=0.2, mining_epochs=(1, 5), begin_epoch=5)
    base, _ = train([ModalityDropoutPlugin(seed=seed)], seed=seed, epochs=10, **data)
    with_mar, strategy = train([ModalityDropoutPlugin(seed=seed), mar], seed=seed, epochs=10, **data)
    assert mar.history[-1]["weak"] == [(False, True)]             # b only
    assert mar.split_sizes == {"train": 1600, "heldout": 400} and mar.heldout is None  # not kept
    assert mar.last_value > 0
    assert with_mar["Top1_Acc_Stream/Task000"] >= base["Top1_Acc_Stream/Task000"] - 0.02


def test_mad_self_distillation_loss_is_finite_and_decreases():
    data = dict(b_mode="weak", sigma_a=0.8, sigma_b=2.5)
    values = []

    class Record(MADPlugin):
        def before_backward(self, strategy, **kwargs):
            super().before_backward(strategy, **kwargs)
            values.append(self.last_value)

    train([ModalityDropoutPlugin(), Record(weight=1.0)], seed=0, epochs=8, **data)
    per_epoch = [sum(values[i:i + 16]) / 16 for i in range(0, len(values), 16)]
    assert all(torch.isfinite(torch.tensor(values)))
    assert per_epoch[-1] < per_epoch[0]


def test_naive_with_dropout_and_every_regulariser_reports_terms_and_metrics():
    data = dict(b_mode="weak", sigma_a=0.8, sigma_b=2.5, train_size=800, test_size=400)
    plugins = [CMLPlugin(weight=1.0), MARPlugin(weight=0.5, mining_epochs=(1, 1), begin_epoch=1),
               MADPlugin(weight=1.0), AttributionRegPlugin(weight=0.5), ModalityDropoutPlugin()]
    from strategies import build_plugins

    ordered = build_plugins([{"name": "cml"}, "modality_dropout"])
    assert isinstance(ordered[0], ModalityDropoutPlugin)
    plugins.insert(0, plugins.pop())                               # dropout first
    metrics = [*modality_plugin_metrics(attribution=True), loss_metrics(epoch=True)]
    results, strategy = train(plugins, seed=0, epochs=3, n_experiences=2, metrics=metrics, **data)
    for p in plugins[1:]:
        assert p.last_value is not None and p.last_value >= 0, p.name
    logged = strategy.evaluator.get_all_metrics()
    for term in ("cml", "mar", "mad", "attribution"):
        assert any(k.startswith(f"LossTerm_Epoch/{term}/") for k in logged), term
    for exp in (0, 1):
        assert f"VRR_Exp/Exp{exp:03d}" in results
        assert f"SubsetAcc_Exp/b/Exp{exp:03d}" in results
        assert f"AttributionShare_Exp/a/Exp{exp:03d}" in results


def test_plugins_reuse_the_step_features_encoders_run_once_per_step():
    data = dict(b_mode="weak", train_size=512, test_size=256)
    plugins = [ModalityDropoutPlugin(), CMLPlugin(pairs="all_nested"), MADPlugin(),
               AttributionRegPlugin()]
    calls = []
    train(plugins, seed=0, epochs=2, metrics=modality_plugin_metrics(),
          on_model=lambda model: calls.append(counting_encode(model)), **data)
    train_steps = 2 * 4                                   # 2 epochs of 512 / 128
    eval_steps = 1                                        # 256 test samples, eval batch 512
    assert len(calls[0]) == train_steps + eval_steps
