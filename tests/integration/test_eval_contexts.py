"""Evaluation contexts: task-homogeneous vs mixed batches, and the context in results.json."""
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from clap4cl.cli import main
from clap4cl.runner.evaluate import predict_logits


class BatchCentred(nn.Module):
    """Output depends on batch-mates, like the VGA with batch context."""

    def forward(self, x):
        return x - x.mean(0, keepdim=True)


def datasets():
    gen = torch.Generator().manual_seed(0)
    return [TensorDataset(torch.randn(10, 3, generator=gen) + 5 * k, torch.full((10,), k))
            for k in range(3)]


def test_mixed_batches_are_split_back_in_dataset_order():
    data = datasets()
    outputs = predict_logits(nn.Identity(), data, batch_size=4, mix_seed=7)
    for (logits, targets), d in zip(outputs, data):
        assert logits.shape == (10, 1, 3)                     # (N, M, C): one sample
        np.testing.assert_array_equal(logits[:, 0], d.tensors[0].numpy())
        np.testing.assert_array_equal(targets, d.tensors[1].numpy())


def test_homogeneous_batches_never_cross_datasets_and_mixed_ones_do():
    data = datasets()
    homogeneous = predict_logits(BatchCentred(), data, batch_size=10)
    for (logits, _), d in zip(homogeneous, data):       # one batch = one whole dataset
        x = d.tensors[0]
        np.testing.assert_allclose(logits[:, 0], (x - x.mean(0)).numpy(), atol=1e-6)
    mixed = predict_logits(BatchCentred(), data, batch_size=10, mix_seed=1)
    assert not np.allclose(mixed[0][0], homogeneous[0][0], atol=1e-3)
    again = predict_logits(BatchCentred(), data, batch_size=10, mix_seed=1)
    np.testing.assert_array_equal(mixed[1][0], again[1][0])


@pytest.mark.parametrize("context", ["reference", "mixed"])
def test_context_is_written_into_results(tmp_path, context):
    code = main(["run", "--quiet", "--output", str(tmp_path / "run"), "--set", "method=clap",
                 "--set", f"eval.context={context}", "--set", "clap.epochs=1",
                 "--set", "dataset.name=synthetic", "--set", "dataset.n_experiences=2",
                 "--set", "dataset.options={n_classes: 4, train_per_class: 20, test_per_class: 10}",
                 "--set", "logging.tensorboard=false"])
    assert code == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["eval_context"] == context
    assert len(results["novelty"]) == 1 and 0 <= results["last_accuracy"] <= 1
