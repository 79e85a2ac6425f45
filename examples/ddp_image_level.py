"""Data-parallel CLAP training with the frozen image encoder in the loop, under torchrun.

Image-level training (every epoch through the encoder, e.g. for augmentations beyond the
horizontal flip) is where several processes pay off: each rank encodes only its share of
every global batch, DDP averages the gradients, and the VGA's batch context is the global
batch. Rank 0 evaluates and prints the table; every rank reports how many training images
it encoded and a checksum of its weights (equal on every rank).

    torchrun --standalone --nproc_per_node=2 examples/ddp_image_level.py
    python examples/ddp_image_level.py                   # the same in one process
"""
from __future__ import annotations

import argparse
import hashlib
import warnings

import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin

import scenarios
from clap4cl import ClapModel, class_text_features, distributed, load_clip
from strategies import CLAP, ClassBalancedMemory


class EncodedImages:
    """Counts the images the frozen encoder encodes while the strategy trains."""

    def __init__(self, clip, strategy_of):
        self.count = 0
        self._encode, self._strategy_of = clip.encode_images, strategy_of
        clip.encode_images = self

    def __call__(self, images):
        strategy = self._strategy_of()
        if strategy is not None and strategy.is_training:
            self.count += len(images)
        return self._encode(images)


def weights_checksum(model) -> str:
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        if torch.is_tensor(value):
            digest.update(name.encode() + value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tiny-vit", help="open_clip architecture")
    parser.add_argument("--n-experiences", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch")
    parser.add_argument("--mc-samples", type=int, default=20)
    args = parser.parse_args(argv)

    distributed.init_from_env(seed=0)
    clip = load_clip(args.arch)
    bench = scenarios.class_incremental("digits", n_experiences=args.n_experiences,
                                        level="image", backbone=clip)
    text = class_text_features(clip, bench.class_names, bench.templates)
    holder = {}
    encoded = EncodedImages(clip, lambda: holder.get("strategy"))
    model = ClapModel(text, clip.logit_scale, mc_samples=args.mc_samples, image_encoder=clip)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
    strategy = CLAP(model=model, memory=ClassBalancedMemory("fixed_total", size=200),
                    train_epochs=args.epochs, train_mb_size=args.batch_size, evaluator=evaluator)
    holder["strategy"] = strategy

    accuracies = []
    for t, experience in enumerate(bench.train_stream):
        strategy.train(experience)
        if distributed.is_main():
            metrics = strategy.eval(bench.test_stream[: t + 1])
            accuracies.append(metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"])
    if distributed.is_main():
        print("| step | accuracy |\n|---|---|")
        for t, acc in enumerate(accuracies):
            print(f"| {t} | {100 * acc:.2f} |")
    print(f"rank {distributed.rank()} of {distributed.world_size()}: encoded {encoded.count} "
          f"training images, weights {weights_checksum(model)}", flush=True)
    return accuracies, encoded.count


if __name__ == "__main__":
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    main()
