"""Training-step time of the learned-prompt methods vs CLAP, and where the time goes.

For each text tower (default: the offline ``tiny-vit`` and a ViT-B-32-sized one with random
weights, so nothing downloads) and each number of seen classes C (tasks of 10 classes),
one training step on a batch of 32 cached image features is timed for

* ``clap``: hand-crafted class features, no text pass;
* ``coop``: CoOp (cross-entropy through the learned prompts);
* ``clap_coop``: CLAP + CoOp with the default shared-prefix text pass, and with the
  reference's full 77-token pass (``clap_coop/77``);
* ``text``: one bare forward + backward of the text transformer over the C prompts,
  truncated at their end-of-text tokens (the cost at true length), with the shared prefix
  run once (``text/prefix``) and at 77 tokens (``text/77``).

Goals: ``clap_coop`` ≤ 1.5 × ``text`` at true length, and ≥ 2 × faster than
``clap_coop/77`` at 100 classes. The last columns split the ``clap_coop`` step into the
text forward, the rest of the forward (VGA, heads, sampled logits, loss) and backward +
SGD update.

    python benchmarks/bench_prompt_learning.py [--towers tiny-vit ViT-B-32]
        [--classes 10 50 100] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from clap4cl.encoders.backbones import load_clip
from clap4cl.encoders.text_features import ClassTextFeatures
from clap4cl.models.clap import ClapModel
from clap4cl.models.coop import ClapCoopModel, CoOpModel
from clap4cl.models.prompt_learner import PromptLearner
from machine import header
from strategies.clap import clap_loss

BATCH = 32
CIFAR100 = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo "
    "keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse "
    "mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate "
    "poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank "
    "telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf "
    "woman worm").split()


def timed(fn, repeats):
    fn()                                                   # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def grow(model, n_classes):
    model.train()
    for start in range(0, n_classes, 10):
        model.add_task(list(range(start, min(start + 10, n_classes))))
    return model


def bench_tower(arch, classes, repeats):
    backbone = load_clip(arch)
    dim = backbone.embed_dim
    rows = []
    for n in classes:
        names = [c.replace("_", " ") for c in CIFAR100[:n]]
        text = ClassTextFeatures.from_per_template(torch.randn(n, 4, dim), names)
        x = F.normalize(torch.randn(BATCH, dim), dim=-1)
        y = torch.randint(0, n, (BATCH,))
        row = {"arch": arch, "C": n}

        def learner(text_pass, n_ctx=12):
            torch.manual_seed(0)
            return PromptLearner(backbone, names, n_ctx=n_ctx, text_pass=text_pass)

        def bare(text_pass):
            prompts = learner(text_pass)

            def step():
                prompts.encode(range(n)).sum().backward()
            return step

        row["text"] = timed(bare("truncated"), repeats)
        row["text/prefix"] = timed(bare("shared_prefix"), repeats)
        row["text/77"] = timed(bare("full"), repeats)
        row["max_len"] = int(learner("truncated").eot.max()) + 1

        def sgd_step(model, loss_of):
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.SGD(params, lr=1e-3)

            def step():
                opt.zero_grad(set_to_none=True)
                loss_of().backward()
                opt.step()
            return step

        clap = grow(ClapModel(text, 100.0, mc_samples=20), n)
        row["clap"] = timed(sgd_step(clap, lambda: clap_loss(
            clap, clap.forward_samples(x), y, [clap.heads.n_tasks - 1], beta=15.0,
            kl_weight=1e-3)), repeats)

        coop = CoOpModel(learner("shared_prefix", n_ctx=16), 100.0).train()
        coop.n_seen_classes = n
        row["coop"] = timed(sgd_step(coop, lambda: F.cross_entropy(coop(x), y)), repeats)

        for label, text_pass in (("clap_coop", "shared_prefix"), ("clap_coop/77", "full")):
            model = grow(ClapCoopModel(learner(text_pass), text, 100.0, mc_samples=20), n)
            tasks = [model.heads.n_tasks - 1]
            row[label] = timed(sgd_step(model, lambda: clap_loss(
                model, model.forward_samples(x), y, tasks, beta=15.0, kl_weight=1e-3)), repeats)
            if label == "clap_coop":
                row.update(split(model, x, y, tasks, repeats))
        rows.append(row)
        print_row(row)
    return rows


def split(model, x, y, tasks, repeats):
    """Seconds of the text forward, the rest of the forward, and backward + update."""
    times = {"t_text": [], "t_rest": [], "t_back": []}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(repeats + 1):
        opt.zero_grad(set_to_none=True)
        start = time.perf_counter()
        model.class_text()
        mid = time.perf_counter()
        loss = clap_loss(model, model.forward_samples(x), y, tasks, beta=15.0, kl_weight=1e-3)
        end = time.perf_counter()
        loss.backward()
        opt.step()
        done = time.perf_counter()
        # forward_samples encodes the prompts again: subtract that second text pass
        times["t_text"].append(mid - start)
        times["t_rest"].append(max(0.0, end - mid - (mid - start)))
        times["t_back"].append(done - end)
    return {k: min(v[1:]) for k, v in times.items()}


COLUMNS = ("clap", "coop", "clap_coop", "clap_coop/77", "text", "text/prefix", "text/77")


def print_table_header():
    print(f"{'tower':>9} {'C':>4} {'len':>4} " + " ".join(f"{c:>12}" for c in COLUMNS)
          + f" {'cc/text':>8} {'77/cc':>6} | {'text fwd':>9} {'rest fwd':>9} {'bwd+sgd':>9}")


def print_row(r):
    ms = " ".join(f"{1000 * r[c]:>10.1f}ms" for c in COLUMNS)
    print(f"{r['arch']:>9} {r['C']:>4} {r['max_len']:>4} {ms} {r['clap_coop'] / r['text']:>8.2f} "
          f"{r['clap_coop/77'] / r['clap_coop']:>6.2f} | {1000 * r['t_text']:>7.1f}ms "
          f"{1000 * r['t_rest']:>7.1f}ms {1000 * r['t_back']:>7.1f}ms", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--towers", nargs="+", default=["tiny-vit", "ViT-B-32"])
    parser.add_argument("--classes", nargs="+", type=int, default=[10, 50, 100])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(header())
    print(f"one training step, batch {BATCH}, M = 20, {args.threads} thread(s); best of "
          f"{args.repeats}. cc/text: clap_coop step / bare text fwd+bwd at true length "
          f"(goal <= 1.5); 77/cc: reference 77-token clap_coop / ours (goal >= 2 at C = 100)")
    print_table_header()
    for arch in args.towers:
        bench_tower(arch, args.classes, args.repeats)


if __name__ == "__main__":
    main()
