"""CLAP speed: cached features vs encoder in the loop, and batched vs looped task heads.

1. Training steps per second of CLAP on cached image features vs. the same steps with
   the frozen image encoder in the loop (the reference re-encodes every batch of every
   epoch). The encoder has the architecture given by --arch (default ViT-B-32) with
   random weights, so nothing downloads. Goal: >= 20x.
2. Evaluation time per sample of the CLAP model with the task heads evaluated as one
   batched product vs. a Python loop per task (reference style), at 1, 10 and 50
   experiences of 10 classes. Goal: batched >= 3x faster at 50, identical outputs.

All ratios are measured in one run (the machines are noisy).

    python benchmarks/bench_clap.py [--arch ViT-B-32] [--context per_image] [--threads 2]
"""
from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from clap4cl import ClapModel, ClassTextFeatures
from clap4cl.models.clap import SIGMA_FLOOR, SIGMA_SCALE
from clap4cl.encoders.backbones import load_clip
from machine import header
from strategies import clap_loss

BATCH = 32


def random_text(n_classes: int, dim: int, n_templates: int = 4) -> ClassTextFeatures:
    per_template = torch.randn(n_classes, n_templates, dim)
    return ClassTextFeatures.from_per_template(per_template, [f"c{i}" for i in range(n_classes)])


def grown_model(n_tasks: int, classes_per_task: int, dim: int, context: str,
                image_encoder=None) -> ClapModel:
    model = ClapModel(random_text(n_tasks * classes_per_task, dim), 100.0,
                      eval_context=context, image_encoder=image_encoder)
    model.train()
    for k in range(n_tasks):
        classes = range(k * classes_per_task, (k + 1) * classes_per_task)
        model.adaptation(SimpleNamespace(classes_in_this_experience=list(classes)))
    return model


def steps_per_second(model, inputs, targets, n_steps: int) -> float:
    """CLAP training steps (forward with M samples, full loss, backward, SGD)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3)
    model.train()
    newest = model.heads.n_tasks - 1
    start = time.perf_counter()
    for _ in range(n_steps):
        out = model.forward_samples(inputs)
        loss = clap_loss(model, out, targets, [newest], beta=15.0, kl_weight=1e-3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return n_steps / (time.perf_counter() - start)


def bench_training(arch: str, encoder_steps: int, cached_steps: int) -> None:
    backbone = load_clip(arch)
    dim = backbone.embed_dim
    size = backbone.image_size
    model = grown_model(2, 10, dim, "per_image", image_encoder=backbone)
    targets = torch.randint(0, 20, (BATCH,))
    images = torch.randn(BATCH, 3, size, size)
    features = backbone.encode_images(images)
    steps_per_second(model, features, targets, 2)                          # warm-up
    cached = steps_per_second(model, features, targets, cached_steps)
    in_loop = steps_per_second(model, images, targets, encoder_steps)
    print(f"training, {arch} ({dim}-d, {size}px), batch {BATCH}, M = {model.mc_samples}:")
    print(f"  cached features   {cached:8.2f} steps/s")
    print(f"  encoder in loop   {in_loop:8.2f} steps/s")
    print(f"  speed-up          {cached / in_loop:8.1f}x   (goal >= 20x)")


@torch.no_grad()
def looped_heads(heads, h):
    """The task heads' (μ, σ) with a Python loop over tasks, as the reference computes them."""
    mus, sigmas, start = [], [], 0
    for k, size in enumerate(heads.sizes):
        part = h[..., start:start + size, :]
        mus.append(F.linear(part, heads.mu_weight[k], heads.mu_bias[k]))
        if heads.variational:
            pre = F.linear(part, heads.sigma_weight[k], heads.sigma_bias[k])
            sigmas.append(SIGMA_SCALE * F.softplus(pre) + SIGMA_FLOOR)
        start += size
    return torch.cat(mus, dim=-2), torch.cat(sigmas, dim=-2) if heads.variational else None


def seconds_per_sample(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / (repeats * BATCH)


@torch.no_grad()
def bench_heads(dim: int, context: str, repeats: int) -> None:
    print(f"evaluation, {dim}-d features, batch {BATCH}, {context} context, 10 classes per experience")
    print("(us per test sample; 'model' = the whole forward, VGA included):")
    print(f"  {'experiences':>11} {'heads batched':>14} {'heads looped':>13} {'speed-up':>9} "
          f"{'model batched':>14} {'model looped':>13} {'max |diff|':>11}")
    for n_tasks in (1, 10, 50):
        model = grown_model(n_tasks, 10, dim, context).eval()
        features = torch.nn.functional.normalize(torch.randn(BATCH, dim), dim=-1)
        h = model.refined_text(features)
        heads = model.heads
        diff = max((a - b).abs().max().item() for a, b in zip(heads(h), looped_heads(heads, h)))
        batched = seconds_per_sample(lambda: heads(h), repeats)
        looped = seconds_per_sample(lambda: looped_heads(heads, h), repeats)
        model_batched = seconds_per_sample(lambda: model(features), max(1, repeats // 4))
        heads.forward = lambda h: looped_heads(model.heads, h)
        model_looped = seconds_per_sample(lambda: model(features), max(1, repeats // 4))
        print(f"  {n_tasks:>11} {batched * 1e6:>14.1f} {looped * 1e6:>13.1f} {looped / batched:>8.1f}x "
              f"{model_batched * 1e6:>14.1f} {model_looped * 1e6:>13.1f} {diff:>11.1e}")
    print("  goal: identical outputs (|diff| <= 1e-5); no speed goal: at 50 experiences both are bound "
          "by reading the weights or by arithmetic (docs/benchmarks.md)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (random weights)")
    parser.add_argument("--context", default="per_image", choices=("batch", "per_image"),
                        help="VGA context for the heads benchmark")
    parser.add_argument("--encoder-steps", type=int, default=3)
    parser.add_argument("--cached-steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(header())
    torch.manual_seed(0)
    bench_training(args.arch, args.encoder_steps, args.cached_steps)
    bench_heads(512, args.context, args.repeats)


if __name__ == "__main__":
    main()
