"""Uncertainty scores against hand computations; selectors keep what their definitions say."""
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.storage_policy import ParametricBuffer
from torch import nn

import scenarios
import strategies
from clap4cl.runner import assemble
from clap4cl.evaluation import scores as uncertainty
from clap4cl.runner.config import CHOICES
from strategies.selectors import herding_order, var_entropy_score

LN3 = math.log(3.0)


def h2(p):
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def two_samples():
    # one input, M = 2: p_1 = (1/2, 1/2), p_2 = (3/4, 1/4); mean logits (ln3/2, 0)
    return torch.tensor([[[0.0, 0.0], [LN3, 0.0]]])


def test_scores_equal_hand_computed_values():
    logits = two_samples()
    p_mean_logits = math.sqrt(3) / (math.sqrt(3) + 1)
    assert uncertainty.msp(logits).item() == pytest.approx(p_mean_logits)
    assert uncertainty.energy(logits).item() == pytest.approx(math.log(math.sqrt(3) + 1))
    assert uncertainty.entropy(logits).item() == pytest.approx(h2(p_mean_logits))
    assert uncertainty.variance(logits).item() == pytest.approx(2 * 0.125 ** 2)
    mi = h2(0.625) - (math.log(2) + h2(0.75)) / 2
    assert uncertainty.mutual_information(logits).item() == pytest.approx(mi)
    assert uncertainty.entropy_variance(logits).item() == pytest.approx(((math.log(2) - h2(0.75)) / 2) ** 2)
    assert uncertainty.true_class_logit(logits, [0]).item() == pytest.approx(LN3 / 2)
    assert uncertainty.true_class_logit(logits, [1]).item() == pytest.approx(0.0)


def test_single_sample_logits_have_no_sample_spread():
    logits = torch.randn(5, 4)
    assert torch.equal(uncertainty.variance(logits), torch.zeros(5, dtype=torch.float64))
    assert torch.allclose(uncertainty.mutual_information(logits), torch.zeros(5, dtype=torch.float64))
    assert torch.allclose(uncertainty.energy(logits), torch.logsumexp(logits.double(), 1))
    assert torch.isfinite(uncertainty.energy(torch.tensor([[1e4, -1e4]]))).all()
    with pytest.raises(ValueError, match="shape"):
        uncertainty.entropy(torch.zeros(2, 3, 4, 5))


def test_novelty_scores_are_oriented_in_distribution_high():
    confident = torch.tensor([[10.0, 0.0, 0.0]])
    unsure = torch.tensor([[0.1, 0.0, 0.0]])
    for name in uncertainty.NOVELTY_SCORES:
        samples_c = confident[:, None].repeat(1, 3, 1)
        samples_u = unsure[:, None].repeat(1, 3, 1) + torch.tensor([[[2.0, 0, 0]], [[0, 2.0, 0]], [[0, 0, 2.0]]]).transpose(0, 1)
        assert uncertainty.novelty_score(name, samples_c) >= uncertainty.novelty_score(name, samples_u), name
    with pytest.raises(ValueError, match="energy"):
        uncertainty.novelty_score("confidence", confident)


# ----------------------------------------------------------------------------- selectors
class LogitsAsInputs(nn.Module):
    """Inputs are (B, M·C) flattened logits; forward_samples returns them as (M, B, C)."""

    def __init__(self, n_samples, n_classes):
        super().__init__()
        self.m, self.c = n_samples, n_classes

    def forward_samples(self, x, n_samples=None):
        return SimpleNamespace(logits=x.view(len(x), self.m, self.c).transpose(0, 1))

    def forward(self, x):
        return self.forward_samples(x).logits.mean(0)


class TargetsDataset(torch.utils.data.TensorDataset):
    @property
    def targets(self):
        return self.tensors[1].tolist()


def select(name, logits, targets, batch_size=2):
    """Selector ``name``'s order on samples whose MC logits are ``logits`` (N, M, C)."""
    n, m, c = logits.shape
    strategy = SimpleNamespace(model=LogitsAsInputs(m, c), eval_mb_size=batch_size, device="cpu")
    data = TargetsDataset(logits.reshape(n, m * c), torch.as_tensor(targets))
    return strategies.make_selector(name).make_sorted_indices(strategy, data)


@pytest.fixture
def mc_logits():
    return torch.randn(7, 4, 3, generator=torch.Generator().manual_seed(0)) * 2


def test_novelty_scores_of_many_inputs_are_computed_in_chunks_with_the_same_values(monkeypatch):
    logits = torch.randn(50, 7, 5, generator=torch.Generator().manual_seed(0)).numpy()
    whole = {name: uncertainty.novelty_score(name, logits) for name in uncertainty.NOVELTY_SCORES}
    monkeypatch.setattr(uncertainty, "SCORE_CHUNK_ROWS", 8)          # 7 chunks, the last short
    for name in uncertainty.NOVELTY_SCORES:
        chunked = uncertainty.novelty_score(name, logits)
        assert chunked.shape == (50,)
        assert torch.allclose(chunked, whole[name], rtol=0, atol=1e-12), name


@pytest.mark.parametrize("name, score, descending", [
    ("entropy", uncertainty.entropy, True),
    ("energy", uncertainty.energy, False),
    ("variance", uncertainty.variance, False),
    ("var_entropy", var_entropy_score, False),
])
def test_uncertainty_selectors_keep_what_their_definition_says(mc_logits, name, score, descending):
    # per-sample scores computed one sample at a time, so a batching misalignment would show
    expected_scores = [score(mc_logits[i:i + 1]).item() for i in range(len(mc_logits))]
    expected = sorted(range(7), key=lambda i: -expected_scores[i] if descending else expected_scores[i])
    for batch_size in (1, 2, 3):                      # B > 1: samples and logits stay aligned
        assert select(name, mc_logits, [0] * 7, batch_size) == expected


def test_distance_keeps_smallest_true_class_logit():
    logits = torch.tensor([[[5.0, 0.0]], [[1.0, 9.0]], [[3.0, 0.0]], [[0.0, -2.0]]])
    assert select("distance", logits, [0, 0, 0, 1]) == [3, 1, 2, 0]


def test_entropy_selector_on_a_constructed_example():
    sure, unsure, middle = [[8.0, 0.0]], [[0.0, 0.0]], [[1.0, 0.0]]
    logits = torch.tensor([sure, unsure, middle])
    assert select("entropy", logits, [0, 0, 0]) == [1, 2, 0]    # most uncertain first
    assert select("energy", logits, [0, 0, 0]) == [1, 2, 0]     # least confident first


def test_herding_picks_the_sample_nearest_the_mean_then_balances():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.9, 0.1]])
    # mean = (0.6, 0.4): first the point nearest it; then the one pulling the pair mean back
    order = herding_order(features)
    assert order[0] == 2
    pair_means = {j: (features[2] + features[j]) / 2 for j in (0, 1, 3)}
    target = features.mean(0)
    assert order[1] == min(pair_means, key=lambda j: float(((pair_means[j] - target) ** 2).sum()))
    assert sorted(order) == [0, 1, 2, 3]


def test_herding_selector_uses_image_features_or_logits():
    logits = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[0.6, 0.4]]])
    assert select("herding_logits", logits, [0, 0, 0])[0] == 2
    assert select("herding", logits, [0, 0, 0])[0] == 2          # inputs are the features here


def test_config_offers_every_selector():
    assert CHOICES["memory.selector"] == tuple(strategies.SELECTORS)


def test_parametric_buffer_with_an_uncertainty_selector_in_a_stock_strategy():
    bench = scenarios.class_incremental("synthetic", n_experiences=2, n_classes=4,
                                        train_per_class=20, test_per_class=5)
    model = nn.Linear(bench.text_features.dim, 4)
    storage = ParametricBuffer(max_size=8, groupby="class",
                               selection_strategy=strategies.make_selector("entropy"))
    with warnings.catch_warnings(record=True):        # Avalanche's Replay calls its deprecated API
        strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                         criterion=nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=1,
                         eval_mb_size=16, plugins=[ReplayPlugin(mem_size=8, storage_policy=storage)],
                         evaluator=EvaluationPlugin(loggers=[]))
        for experience in bench.train_stream:
            strategy.train(experience)
    assert len(storage.buffer) == 8
    groups = storage.buffer_groups
    assert sorted(groups) == [0, 1, 2, 3] and all(len(g.buffer) == 2 for g in groups.values())
    # the kept samples of the last experience's classes are its highest-entropy ones
    data = bench.train_stream[1].dataset.eval()
    targets = np.asarray(list(data.targets))
    with torch.no_grad():
        x = torch.stack([data[i][0] for i in range(len(data))])
        entropy = uncertainty.entropy(model(x)).numpy()
    for c in np.unique(targets):
        members = np.flatnonzero(targets == c)
        best = set(np.round(entropy[members[np.argsort(-entropy[members])[:2]]], 6))
        kept = groups[int(c)].buffer.eval()
        with torch.no_grad():
            kept_entropy = uncertainty.entropy(model(torch.stack([kept[i][0] for i in range(2)]))).numpy()
        assert set(np.round(kept_entropy, 6)) == best


@pytest.mark.parametrize("selector", ["entropy", "herding"])
def test_clap_memory_with_an_uncertainty_selector(selector):
    from clap4cl.runner.config import defaults

    bench = scenarios.class_incremental("synthetic", n_experiences=2, n_classes=4,
                                        train_per_class=20, test_per_class=5)
    config = defaults()
    config["clap"].update(epochs=1, finetune_epochs=1, mc_samples=4, vga_ffn_dim=32)
    config["memory"].update(selector=selector, size=8)
    with warnings.catch_warnings(record=True):        # no loggers: deliberate
        evaluator = EvaluationPlugin(loggers=[])
    strategy = assemble.build_from_config(config, text_features=bench.text_features,
                                            logit_scale=100.0, evaluator=evaluator)
    for experience in bench.train_stream:
        strategy.train(experience)
    assert len(strategy.memory) == 8
    assert sorted(strategy.memory.exemplars) == [0, 1, 2, 3]
