"""Train the image tower of ``tiny-vit`` on the digits training images, without labels.

The result, ``clap4cl/encoders/weights/tiny-vit-digits.pt``, is the offline default encoder
of ``clap4cl run`` (``backbone: {arch: tiny-vit, pretrained: digits}``). It exists so that
the default run shows continual learning: with a randomly initialised ``tiny-vit`` all
digits images get nearly the same feature (pairwise cosine 0.97-1.0) and every method
ends at chance.

What the encoder is:

* the ``tiny-vit`` open_clip architecture (2-layer ViT, width 64, 8x8 patches on the
  32x32 upscaled digit, 64-d joint embedding);
* an image tower trained by image-image contrastive learning (SimCLR's NT-Xent loss)
  on the 1347 images of the digits *training* split that the ``digits`` scenario uses
  (``scenarios.datasets.digits.load_digits()``, stratified 75/25 split with seed 0). It
  never sees a test image and never sees a label: the two views of a pair are the same
  digit under a random small shift, rotation, scale and stroke-intensity change plus
  pixel noise, applied to the 32x32 tensor exactly as ``preprocess_test`` produces it;
* a text tower that is *not trained*: it is the seeded random initialisation of
  ``load_clip("tiny-vit")`` (seed 0), the same as the ``pretrained: null`` default.
  Class-name prompts therefore give distinct text features (mean pairwise cosine
  about 0.8) that know nothing about what the digits look like.

What it is not: it is not CLIP and not a pretrained foundation model. Its image features
separate the digits classes (a nearest-class-mean classifier on training features
reaches about 0.93 test accuracy), but image and text are not aligned, so zero-shot
classification is at chance by construction and a method must learn the image-to-class
mapping from the stream. That makes the default run a small but fair continual-learning
testbed: CLAP, CLIP-Adapter and zero-shot differ by what they learn, not by a text
tower that already solves the task. Its image features are in-domain for digits only.

The file holds only the image tower (``visual.*`` keys) as an fp16 state dict, under
0.25 MB; ``load_clip`` builds the seeded random model and loads these weights over it.
Its SHA-256 is the weights identity the feature cache keys on.

Reproducible: fixed seed, one CPU thread, deterministic algorithms; about two minutes on a
laptop CPU. Run from the repository root::

    OMP_NUM_THREADS=1 python scripts/train_digits_clip.py            # writes the package file
    python scripts/train_digits_clip.py --output /tmp/w.pt --steps 50  # a quick try
"""
from __future__ import annotations

import argparse
import hashlib
import io
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clap4cl.encoders.backbones import load_clip  # noqa: E402
from scenarios.datasets.digits import load_digits  # noqa: E402

DEFAULT_OUTPUT = REPO / "clap4cl" / "encoders" / "weights" / "tiny-vit-digits.pt"


def preprocessed_tensors(clip, dataset) -> torch.Tensor:
    """(N, 3, 32, 32) images through the backbone's own test preprocessing."""
    return torch.stack([clip.preprocess_test(dataset[i][0]) for i in range(len(dataset))])


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random view of each preprocessed image: affine jitter, intensity change, noise.

    Shifts up to 3 px of 32 (under one original pixel), rotations up to 12 degrees,
    scale 0.9-1.1, stroke intensity x0.8-1.2 around the background, Gaussian noise 0.1.
    No horizontal flip: mirrored digits are not the same digit.
    """
    n = x.shape[0]

    def uniform(low, high):
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-12, 12) * math.pi / 180
    scale = uniform(0.9, 1.1)
    tx, ty = uniform(-3 / 16, 3 / 16), uniform(-3 / 16, 3 / 16)  # grid units: 2 = 32 px
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    background = x.amin(dim=(2, 3), keepdim=True)
    shifted = F.grid_sample(x - background, grid, padding_mode="zeros", align_corners=False)
    contrast = uniform(0.8, 1.2).view(n, 1, 1, 1)
    noise = 0.1 * torch.randn(x.shape, generator=generator)
    return background + contrast * shifted + noise


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner among the other 2N-1 views."""
    z = F.normalize(torch.cat([a, b]), dim=-1)
    n = a.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, target)


@torch.no_grad()
def features(model, x: torch.Tensor) -> torch.Tensor:
    return F.normalize(torch.cat([model.encode_image(c) for c in x.split(512)]).float(), dim=-1)


@torch.no_grad()
def report(model, train_x, train_y, test_x, test_y) -> dict:
    """Nearest-class-mean test accuracy and mean between-class cosine (for the log only:
    labels are used here to describe the encoder, never to train it)."""
    model.eval()
    f_train, f_test = features(model, train_x), features(model, test_x)
    means = F.normalize(torch.stack([f_train[train_y == c].mean(0) for c in range(10)]), dim=-1)
    ncm = (f_test @ means.T).argmax(1).eq(test_y).float().mean().item()
    cos = f_test @ f_test.T
    different = test_y[:, None] != test_y[None, :]
    model.train()
    return {"ncm_accuracy": round(ncm, 4), "between_class_cosine": round(cos[different].mean().item(), 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    clip = load_clip("tiny-vit", seed=0)  # the seeded random init; its text tower is kept
    model = clip.model
    visual = model.visual
    splits = load_digits()
    train_x = preprocessed_tensors(clip, splits.train)
    test_x = preprocessed_tensors(clip, splits.test)
    train_y = torch.tensor([splits.train[i][1] for i in range(len(splits.train))])
    test_y = torch.tensor([splits.test[i][1] for i in range(len(splits.test))])
    print(f"random init: {report(model, train_x, train_y, test_x, test_y)}", flush=True)

    for p in visual.parameters():
        p.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(visual.parameters(), lr=args.lr, weight_decay=0.05)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup)
                                                 * 0.5 * (1 + math.cos(math.pi * s / args.steps)))
    start = time.time()
    n = len(train_x)
    order = torch.randperm(n, generator=generator)
    cursor = 0
    for step in range(args.steps):
        if cursor + args.batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        batch = train_x[order[cursor:cursor + args.batch_size]]
        cursor += args.batch_size
        a, b = augment(batch, generator), augment(batch, generator)
        loss = nt_xent(visual(a), visual(b), args.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            print(f"step {step + 1}/{args.steps} loss {loss.item():.3f} "
                  f"{report(model, train_x, train_y, test_x, test_y)} {time.time() - start:.0f}s",
                  flush=True)

    state = {k: v.detach().to(torch.float16).clone() for k, v in model.state_dict().items()
             if k.startswith("visual.")}
    # Saved through a buffer: torch.save names the archive after the file, and the bytes
    # (whose SHA-256 is the weights identity) must not depend on where they are written.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(buffer.getvalue())
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
