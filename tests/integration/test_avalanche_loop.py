"""Avalanche's canonical loop on ClapModel with stock strategies and CLAP: every experience
of the full test stream is evaluated after every training experience (``train(exp)`` then
``eval(bench.test_stream)``, and ``train(exp, eval_streams=[bench.test_stream])``)."""
import math
import warnings

import pytest
import torch
from avalanche.evaluation.metrics import (accuracy_metrics, bwt_metrics, forgetting_metrics,
                                          loss_metrics)
from avalanche.core import SupervisedPlugin
from avalanche.training import EWC, GDumb, LwF, Naive
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.storage_policy import ParametricBuffer

import scenarios
from clap4cl import ClapModel
from clap4cl.evaluation.plugin_metrics import calibration_plugin_metrics, continual_metrics
from clap4cl.models.masking import UNSEEN_LOGIT
from strategies import CLAP, ClassBalancedMemory, make_selector

N_EXP, N_CLASSES = 4, 8
STRATEGIES = ["naive", "replay", "lwf", "ewc", "gdumb", "clap"]


@pytest.fixture(scope="module")
def bench():
    return scenarios.class_incremental("synthetic", n_experiences=N_EXP, run=0,
                                       n_classes=N_CLASSES, train_per_class=12, test_per_class=6)


def evaluator():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True), loss_metrics(experience=True, stream=True),
            forgetting_metrics(experience=True, stream=True), bwt_metrics(experience=True, stream=True),
            *calibration_plugin_metrics(), *continual_metrics(), loggers=[])


def make_strategy(name, bench, **kwargs):
    torch.manual_seed(0)
    model = ClapModel(bench.text_features, logit_scale=30.0, vga_ffn_dim=16, mc_samples=2)
    plugins = list(kwargs.pop("plugins", ()))
    common = dict(train_mb_size=16, eval_mb_size=32, evaluator=evaluator(), **kwargs)
    if name == "clap":
        memory = ClassBalancedMemory(size=16, selector=make_selector("entropy"))
        return CLAP(model=model, memory=memory, train_epochs=1, finetune_epochs=1, lr=0.05,
                    plugins=plugins, **common)
    stock = dict(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                 criterion=torch.nn.CrossEntropyLoss(), train_epochs=1, **common)
    if name != "replay":
        stock["plugins"] = plugins
    if name == "naive":
        return Naive(**stock)
    if name == "replay":       # stock replay with the toolkit's uncertainty selector
        policy = ParametricBuffer(max_size=16, selection_strategy=make_selector("entropy"))
        return Naive(**stock, plugins=plugins + [ReplayPlugin(mem_size=16, storage_policy=policy)])
    if name == "lwf":
        return LwF(**stock, alpha=1.0, temperature=2.0)
    if name == "ewc":
        return EWC(**stock, ewc_lambda=1.0)
    if name == "gdumb":
        return GDumb(**stock, mem_size=16)
    raise AssertionError(name)


def experience_accuracies(results):
    return {k: results[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{k:03d}"] for k in range(N_EXP)}


def assert_all_finite(results):
    numbers = {name: value for name, value in results.items()
               if isinstance(value, (int, float)) or torch.is_tensor(value)}
    bad = {name: value for name, value in numbers.items() if not math.isfinite(float(value))}
    assert not bad
    return numbers


@pytest.mark.parametrize("name", STRATEGIES)
def test_train_then_evaluate_the_whole_test_stream(name, bench):
    strategy = make_strategy(name, bench)
    test_sizes = [len(e.dataset) for e in bench.test_stream]
    for t, experience in enumerate(bench.train_stream):
        strategy.train(experience)
        results = strategy.eval(bench.test_stream)
        numbers = assert_all_finite(results)
        accuracy = experience_accuracies(results)
        assert all(accuracy[k] == 0.0 for k in range(t + 1, N_EXP))     # future experiences
        assert sum(accuracy[k] for k in range(t + 1)) > 0
        # Avalanche's stream accuracy counts the future experiences; the toolkit's step
        # accuracy is over the seen ones only
        seen = sum(accuracy[k] * test_sizes[k] for k in range(t + 1)) / sum(test_sizes[: t + 1])
        assert results["StepAcc/eval_phase/test_stream"] == pytest.approx(seen)
        assert results["Top1_Acc_Stream/eval_phase/test_stream/Task000"] == pytest.approx(
            seen * sum(test_sizes[: t + 1]) / sum(test_sizes))
        for k in range(N_EXP):                                           # loss finite everywhere
            assert math.isfinite(results[f"Loss_Exp/eval_phase/test_stream/Task000/Exp{k:03d}"])
        # calibration: one value per seen experience and one for the stream, none for future
        assert [k for k in range(N_EXP) if f"ECE_Exp/eval_phase/test_stream/Task000/Exp{k:03d}"
                in results] == list(range(t + 1))
        assert "NLL_Stream/eval_phase/test_stream/Task000" in numbers
        if t > 0:
            assert math.isfinite(results["StreamForgetting/eval_phase/test_stream"])
            assert math.isfinite(results["StreamBWT/eval_phase/test_stream"])
            assert math.isfinite(results["BWT/eval_phase/test_stream"])
            assert math.isfinite(results["Forgetting/eval_phase/test_stream"])


@pytest.mark.parametrize("name", STRATEGIES)
def test_periodic_evaluation_of_the_whole_test_stream_while_training(name, bench):
    strategy = make_strategy(name, bench, eval_every=1)
    for t, experience in enumerate(bench.train_stream):
        results = strategy.train(experience, eval_streams=[bench.test_stream])
        assert_all_finite(results)
        accuracy = experience_accuracies(results)
        assert all(accuracy[k] == 0.0 for k in range(t + 1, N_EXP))
    assert strategy.model.task_sizes == [2] * N_EXP


def test_before_any_training_only_avalanche_s_own_initial_evaluation_gets_logits(bench):
    strategy = make_strategy("naive", bench)
    with pytest.raises(RuntimeError, match="^the model has no classes yet: train on an "
                                           "experience first"):
        strategy.eval(bench.test_stream)
    fresh = ClapModel(bench.text_features, logit_scale=30.0, vga_ffn_dim=16)
    fresh.train()            # what strategy.train does before its initial periodic evaluation
    x = torch.randn(3, bench.text_features.dim)
    assert torch.equal(fresh(x), torch.full((3, N_CLASSES), UNSEEN_LOGIT))


def head_weights(model):
    return [w.detach().clone() for w in model.heads.mu_weight]


class HeadGradients(SupervisedPlugin):
    """The largest |gradient| each trainable head's mean weights got, per phase of the
    experience (CLAP: ``main`` or ``finetune``), and the heads at the start of each epoch."""

    def __init__(self):
        super().__init__()
        self.largest, self.at_epoch = {}, {}

    def before_training_exp(self, strategy, **kwargs):
        self.largest, self.at_epoch = {}, {}

    def before_training_epoch(self, strategy, **kwargs):
        self.at_epoch[strategy.clock.train_exp_epochs] = head_weights(strategy.model)

    def after_backward(self, strategy, **kwargs):
        phase = "finetune" if getattr(strategy, "finetuning", False) else "main"
        row = self.largest.setdefault(phase, [0.0] * strategy.model.heads.n_tasks)
        for k, w in enumerate(strategy.model.heads.mu_weight):
            if w.requires_grad and w.grad is not None:
                row[k] = max(row[k], float(w.grad.abs().max()))


@pytest.mark.parametrize("name", STRATEGIES)
def test_each_strategy_trains_the_heads_it_should(name, bench):
    """Stock strategies train every head (the model's default ``freeze_old_heads=False``);
    CLAP's main phase trains the newest head only and its finetuning trains all of them."""
    watch = HeadGradients()
    strategy = make_strategy(name, bench, plugins=[watch])
    init = ClapModel(bench.text_features, logit_scale=30.0, vga_ffn_dim=16)
    init.train()
    for t, experience in enumerate(bench.train_stream[:3]):
        before = head_weights(strategy.model)
        strategy.train(experience)
        init.adaptation(experience)
        after = head_weights(strategy.model)
        if name == "clap":
            assert [g > 0 for g in watch.largest["main"]] == [False] * t + [True]
            if t > 0:                # after the main epoch, the older heads are as before
                assert [torch.equal(a, b) for a, b in zip(before, watch.at_epoch[1])] == [True] * t
                assert all(g > 0 for g in watch.largest["finetune"])
        else:
            assert all(g > 0 for g in watch.largest["main"]) and len(watch.largest["main"]) == t + 1
        if name != "gdumb":          # GDumb retrains a fresh copy of its initial model
            assert [torch.equal(a, b) for a, b in zip(before, after)] == [False] * t
    # no head is left at its language initialisation (under GDumb neither: it trains them all)
    assert [torch.equal(a, b) for a, b in zip(head_weights(init), after)] == [False] * 3


def test_freezing_old_heads_is_an_option_of_the_model_for_stock_strategies(bench):
    watch = HeadGradients()
    torch.manual_seed(0)
    model = ClapModel(bench.text_features, 30.0, vga_ffn_dim=16, freeze_old_heads=True)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                     criterion=torch.nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=1,
                     evaluator=evaluator(), plugins=[watch])
    strategy.train(bench.train_stream[0])
    before = head_weights(model)
    strategy.train(bench.train_stream[1])
    assert [g > 0 for g in watch.largest["main"]] == [False, True]
    assert torch.equal(before[0], head_weights(model)[0])


def test_lwf_shares_the_frozen_encoder_with_its_copy_of_the_model(bench, tiny_backbone):
    model = ClapModel(bench.text_features, 30.0, vga_ffn_dim=16, mc_samples=2,
                      image_encoder=tiny_backbone)     # inputs are features: never called
    strategy = LwF(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                   criterion=torch.nn.CrossEntropyLoss(), alpha=1.0, temperature=2.0,
                   train_mb_size=16, train_epochs=1, evaluator=evaluator())
    strategy.train(bench.train_stream[0])
    teacher = next(p for p in strategy.plugins if hasattr(p, "lwf")).lwf.prev_model
    assert teacher is not model and teacher.image_encoder is tiny_backbone
    assert teacher.class_features is not model.class_features
    assert not [k for k in teacher.state_dict() if "visual" in k]
    strategy.train(bench.train_stream[1])              # distils through the shared encoder
    assert next(p for p in strategy.plugins if hasattr(p, "lwf")).lwf.prev_model.image_encoder \
        is tiny_backbone
