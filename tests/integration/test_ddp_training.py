"""Data-parallel training under torchrun: 2 CPU processes (gloo) against one process."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from clap4cl import distributed
from clap4cl.runner.config import default_config_path, load_config
from clap4cl.runner.experiment import run_experiment

REPO = Path(__file__).resolve().parents[2]
SMALL_CLAP = ["method=clap", "dataset.n_experiences=2", "dataset.options.n_classes=10",
              "clap.epochs=3", "logging.progress=false", "logging.tensorboard=false"]


def torchrun(*args, cwd, env=None):
    """``torchrun --standalone --nproc_per_node=2 ...`` with this interpreter."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *map(str, args)]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_process_clap_run_reaches_the_accuracy_of_one_process(tmp_path):
    overrides = SMALL_CLAP + [f"cache.dir={tmp_path / 'cache'}"]
    single = run_experiment(load_config(REPO / "configs" / "synthetic.yaml", overrides),
                            tmp_path / "single")
    done = torchrun("-m", "clap4cl", "run", "--config", REPO / "configs" / "synthetic.yaml",
                    *[a for o in overrides for a in ("--set", o)], "--output", tmp_path / "ddp",
                    cwd=tmp_path)
    parallel = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert done.stdout.count("last accuracy") == 1            # rank 0 alone reports
    assert parallel["completed_experiences"] == 2
    assert single["last_accuracy"] > 0.5                        # both runs really learn
    assert abs(parallel["last_accuracy"] - single["last_accuracy"]) <= 0.03
    assert abs(parallel["avg_incremental_accuracy"] - single["avg_incremental_accuracy"]) <= 0.03


def test_two_process_coop_run_learns_like_one_process(tmp_path):
    """The learned context is an ordinary parameter, so DDP all-reduces its gradient: a
    two-process CoOp run on digits learns as one process does (batch order differs)."""
    overrides = ["method=coop", "dataset.n_experiences=2", "coop.epochs=2", "coop.finetune_epochs=1",
                 "logging.progress=false", "logging.tensorboard=false", f"cache.dir={tmp_path / 'cache'}"]
    single = run_experiment(load_config(default_config_path(), overrides), tmp_path / "single")
    torchrun("-m", "clap4cl", "run", *[a for o in overrides for a in ("--set", o)],
             "--output", tmp_path / "ddp", cwd=tmp_path)
    parallel = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert parallel["completed_experiences"] == 2
    assert single["last_accuracy"] > 0.35 and parallel["last_accuracy"] > 0.3   # chance: 0.25
    assert abs(parallel["last_accuracy"] - single["last_accuracy"]) <= 0.08


STEP_SCRIPT = textwrap.dedent("""
    import sys, torch
    from clap4cl import distributed
    sys.path.insert(0, sys.argv[2])
    from test_ddp_training import one_sgd_step, step_inputs

    distributed.init_from_env(seed=0)
    model, feats, targets = step_inputs()
    share = feats.shape[0] // distributed.world_size()
    rows = slice(distributed.rank() * share, (distributed.rank() + 1) * share)
    ddp = distributed.data_parallel(model, "forward_samples")
    one_sgd_step(model, ddp, feats[rows], targets[rows])
    if distributed.is_main():
        torch.save({k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}, sys.argv[1])
""")


UNIT_TESTS = Path(__file__).resolve().parents[1] / "unit"


def step_inputs():
    """A grown CLAP model without dropout and one global batch of 8 features."""
    if str(UNIT_TESTS) not in sys.path:      # the torchrun ranks run outside pytest
        sys.path.insert(0, str(UNIT_TESTS))
    from test_clap_model import grown_model

    model = grown_model(vga_dropout=0.0).train()
    model.heads.set_trainable([0, 1])
    gen = torch.Generator().manual_seed(1)
    return model, torch.randn(8, 8, generator=gen), torch.randint(0, 5, (8,), generator=gen)


def one_sgd_step(model, forward, feats, targets):
    from strategies.clap import clap_loss

    torch.manual_seed(2)                       # the same ε on every rank and in one process
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    loss = clap_loss(model, forward(feats), targets, [0, 1], beta=15.0, kl_weight=1e-3)
    loss.backward()
    optimizer.step()


def test_a_ddp_step_equals_one_process_step_on_the_global_batch(tmp_path):
    """Gradients averaged over ranks + the VGA attending over the global batch: one DDP
    step on two halves of a batch moves every weight exactly as one process does."""
    script = tmp_path / "ddp_step.py"
    script.write_text(STEP_SCRIPT)
    torchrun(script, tmp_path / "ddp.pt", Path(__file__).parent, cwd=REPO)
    model, feats, targets = step_inputs()
    before = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    one_sgd_step(model, model.forward_samples, feats, targets)
    parallel = torch.load(tmp_path / "ddp.pt")
    moved = [k for k in before if not torch.allclose(before[k], model.state_dict()[k])]
    assert moved                                                 # the step trained something
    for name, value in model.state_dict().items():
        if torch.is_tensor(value):
            assert torch.allclose(parallel[name], value, atol=1e-6), name


def test_a_global_batch_must_split_evenly_over_the_ranks(monkeypatch):
    from strategies.clap import CLAP
    from test_clap_model import grown_model

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="train_mb_size 33 is the global batch"):
        CLAP(model=grown_model(), train_mb_size=33)


@pytest.mark.parametrize("override, message", [
    ("clap.batch_size=33", "clap.batch_size 33 is the global batch: it must be divisible by the 2"),
    ("plugins=[cml]", "plugins ['cml'] are not supported in data-parallel runs"),
    ("dataset.name=two_modality", "method multi_encoder does not train data-parallel"),
])
def test_a_distributed_run_refuses_what_it_cannot_split(monkeypatch, override, message):
    from clap4cl.errors import UserError
    from clap4cl.runner.torchrun import start_distributed

    monkeypatch.setattr(distributed, "init_from_env", lambda seed, device: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    method = "multi_encoder" if "two_modality" in override else "clap"
    config = load_config(REPO / "configs" / "synthetic.yaml", [f"method={method}", override])
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        start_distributed(config, seed=0)


def test_image_level_training_splits_the_encoder_work_over_the_ranks(tmp_path):
    """The example trains CLAP with the encoder in the loop: each rank encodes half of
    every global batch, and both end with the same weights."""
    done = torchrun(REPO / "examples" / "ddp_image_level.py", "--n-experiences", 2,
                    "--epochs", 1, "--mc-samples", 4, cwd=tmp_path)
    reports = [line.split() for line in done.stdout.splitlines() if line.startswith("rank ")]
    assert sorted(r[1] for r in reports) == ["0", "1"]
    counts, checksums = {int(r[5]) for r in reports}, {r[-1] for r in reports}
    # one process encodes 1347 digits + 200 replayed in experience 1 + 2 finetuning
    # epochs x 200 = 1947 images; a DistributedSampler pads each pass by at most one
    assert len(counts) == 1 and 0 <= 2 * counts.pop() - 1947 <= 4
    assert len(checksums) == 1
    assert "| step | accuracy |" in done.stdout
