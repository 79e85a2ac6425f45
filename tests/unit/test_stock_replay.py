"""Stock Avalanche replay with the toolkit's selectors: Naive + ReplayPlugin(ParametricBuffer)."""
import warnings

import pytest
import torch
from avalanche.training import Naive, Replay
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.storage_policy import ParametricBuffer

import scenarios
import strategies
from clap4cl import ClapModel
from clap4cl.evaluation import scores


def entropies(model, dataset):
    model.eval()
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        return scores.entropy(scores.sample_logits(model, x))


def test_avalanche_replay_takes_no_storage_policy():
    bench = scenarios.class_incremental("synthetic", n_experiences=3, n_classes=6)
    model = ClapModel(bench.text_features, logit_scale=100.0)
    with pytest.raises(TypeError, match="storage_policy"):
        Replay(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1e-3),
               criterion=torch.nn.CrossEntropyLoss(), mem_size=60,
               storage_policy=ParametricBuffer(max_size=60))


def test_naive_with_an_uncertainty_selected_buffer_keeps_the_most_uncertain_samples():
    bench = scenarios.class_incremental("synthetic", n_experiences=3, n_classes=6,
                                        train_per_class=30, test_per_class=5)
    torch.manual_seed(0)
    model = ClapModel(bench.text_features, logit_scale=100.0, variational=False, vga_ffn_dim=32)
    selector = strategies.UncertaintySelection(lambda logits, targets: scores.entropy(logits),
                                               keep="highest")
    buffer = ParametricBuffer(max_size=24, groupby="class", selection_strategy=selector)
    with warnings.catch_warnings(record=True):
        strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1e-2),
                         criterion=torch.nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=1,
                         plugins=[ReplayPlugin(mem_size=24, storage_policy=buffer)],
                         evaluator=EvaluationPlugin(loggers=[]))
    experience = bench.train_stream[0]
    strategy.train(experience)
    assert len(buffer.buffer) == 24                          # 12 per class of experience 0
    data = experience.dataset.eval()
    targets = torch.as_tensor(list(data.targets))
    all_entropy = entropies(strategy.model, data)
    for c in experience.classes_in_this_experience:
        kept = buffer.buffer_groups[c].buffer.eval()
        assert len(kept) == 12
        expected = torch.sort(all_entropy[targets == c], descending=True).values[:12]
        got = torch.sort(entropies(strategy.model, kept), descending=True).values
        torch.testing.assert_close(got, expected)
