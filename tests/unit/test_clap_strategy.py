"""The CLAP strategy, its replay memory and schedule, baselines and Avalanche interop."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
from avalanche.training import Naive, Replay
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin

import scenarios
import strategies
from clap4cl.runner import assemble
from clap4cl.models.clap import kl_loss, language_loss
from clap4cl.runner.config import defaults, validate
from strategies import ClassBalancedMemory, FirstKExemplarsSelection, warmup_cosine

N_CLASSES, N_EXP = 10, 5
STREAM_ACC = "Top1_Acc_Stream/eval_phase/test_stream/Task000"


@pytest.fixture(scope="module")
def bench():
    return scenarios.class_incremental("synthetic", n_experiences=N_EXP, run=0, n_classes=N_CLASSES,
                                       train_per_class=40, test_per_class=20)


def small_config(method="clap", **clap):
    config = defaults()
    config["method"] = method
    config["clap"].update(epochs=3, finetune_epochs=1, mc_samples=8, vga_ffn_dim=64, **clap)
    config["memory"].update(size=200)
    config["clip_adapter"].update(epochs=3)
    validate(config)
    return config


def make_strategy(bench, config, **kwargs):
    return assemble.build_from_config(config, text_features=bench.text_features,
                                        logit_scale=100.0, **kwargs)


def quiet_evaluator(*metrics):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(*(metrics or (accuracy_metrics(stream=True),)), loggers=[])


def last_accuracy(strategy, bench):
    results = strategy.eval(bench.test_stream)
    return results[STREAM_ACC]


def run_stream(strategy, bench, start=0, stop=None):
    for experience in bench.train_stream[start:stop]:
        strategy.train(experience)


# --------------------------------------------------------------------- schedule
def test_warmup_cosine_matches_the_reference_schedule():
    factor = warmup_cosine(total_steps=10, warmup_steps=3, min_factor=1e-3)
    assert [factor(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    for s in range(3, 10):
        expected = 1e-3 + 0.5 * (1 - 1e-3) * (1 + math.cos(math.pi * (s - 3) / 7))
        assert factor(s) == pytest.approx(expected)
    assert factor(10) == pytest.approx(1e-3)
    assert warmup_cosine(5, 0, 0.1)(0) == 1.0


class Recorder(SupervisedPlugin):
    """Per update: phase, learning rate and snapshots of the VGA and of every head."""

    def __init__(self):
        super().__init__()
        self.updates = []

    def after_update(self, strategy, **kwargs):
        model = strategy.model
        self.updates.append({
            "exp": strategy.clock.train_exp_counter,
            "finetuning": strategy.finetuning,
            "lr": strategy.optimizer.param_groups[0]["lr"],
            "vga": torch.cat([p.detach().flatten() for p in model.vga.parameters()]).clone(),
            "heads": [w.detach().clone() for w in model.heads.mu_weight],
        })


def test_main_phase_trains_vga_and_newest_head_finetuning_only_heads(bench):
    recorder = Recorder()
    config = small_config()
    strategy = make_strategy(bench, config, plugins=[recorder], evaluator=quiet_evaluator())
    run_stream(strategy, bench, stop=2)
    first = [u for u in recorder.updates if u["exp"] == 0]
    main = [u for u in recorder.updates if u["exp"] == 1 and not u["finetuning"]]
    tune = [u for u in recorder.updates if u["exp"] == 1 and u["finetuning"]]
    assert not any(u["finetuning"] for u in first)   # no finetuning after the first experience
    assert main and tune
    lr0 = config["clap"]["lr"]
    warmup = int(0.3 * len(main))
    assert main[0]["lr"] == pytest.approx(lr0 * 2 / (warmup + 1))  # lr after the first step
    assert max(u["lr"] for u in main) == pytest.approx(lr0, rel=1e-6)
    assert max(u["lr"] for u in tune) <= lr0 / 10 + 1e-12
    # main phase: the old head is frozen, the new head and the VGA move
    assert torch.equal(main[0]["heads"][0], main[-1]["heads"][0])
    assert not torch.equal(main[0]["heads"][1], main[-1]["heads"][1])
    assert not torch.equal(main[0]["vga"], main[-1]["vga"])
    # finetuning: the VGA is frozen, every head moves
    assert torch.equal(tune[0]["vga"], tune[-1]["vga"])
    assert torch.equal(tune[-1]["vga"], main[-1]["vga"])
    for k in (0, 1):
        assert not torch.equal(tune[0]["heads"][k], tune[-1]["heads"][k])


class EpochCounter(SupervisedPlugin):
    """Per experience: the epochs plugins see, with the phase and the clock at each."""

    def __init__(self):
        super().__init__()
        self.epochs = {}

    def after_training_epoch(self, strategy, **kwargs):
        exp = strategy.experience.current_experience
        self.epochs.setdefault(exp, []).append((strategy.clock.train_exp_epochs,
                                                strategy.finetuning, strategy.dataloader))


def test_finetuning_epochs_are_avalanche_epochs_plugins_and_the_clock_see(bench):
    counter = EpochCounter()
    config = small_config()
    config["clap"].update(epochs=2, finetune_epochs=3)
    strategy = make_strategy(bench, config, plugins=[counter], evaluator=quiet_evaluator())
    run_stream(strategy, bench, stop=3)
    assert [phase for _, phase, _ in counter.epochs[0]] == [False, False]   # no memory yet
    for exp in (1, 2):
        seen = counter.epochs[exp]
        assert [phase for _, phase, _ in seen] == [False] * 2 + [True] * 3    # 2 + 3 epochs
        assert [clock for clock, _, _ in seen] == [0, 1, 2, 3, 4]          # counted before the increment
        loaders = [loader for _, _, loader in seen]
        assert loaders[0] is loaders[1] and all(loader is loaders[2] for loader in loaders[3:])
        assert loaders[2] is not loaders[0]                                 # the memory's loader
    assert strategy.clock.train_exp_epochs == 5                             # the last experience's


def test_a_memory_too_small_for_one_exemplar_per_class_skips_finetuning(bench):
    """fixed_total 3 over 4+ seen classes keeps 0 per class: no crash, the extra epochs are
    skipped with a warning (before: DataLoader "num_samples=0" in the first finetune epoch)."""
    counter = EpochCounter()
    config = small_config()
    config["clap"].update(epochs=1, finetune_epochs=2)
    config["memory"].update(policy="fixed_total", size=3)
    strategy = make_strategy(bench, config, plugins=[counter], evaluator=quiet_evaluator())
    with pytest.warns(UserWarning, match="holds no exemplar after experience 1: its extra "
                                         "epochs are skipped"):
        run_stream(strategy, bench, stop=2)
    assert len(strategy.memory) == 0
    assert [phase for _, phase, _ in counter.epochs[1]] == [False]      # the main epoch only


def test_clap_loss_is_the_mean_per_sample_ce_plus_weighted_regularisers(bench):
    model = assemble.build_clap_model(small_config(), bench.text_features, 100.0)
    model.train()
    model.adaptation(bench.train_stream[0])
    model.adaptation(bench.train_stream[1])
    x = torch.randn(6, bench.text_features.dim)
    y = torch.tensor([0, 1, 2, 3, 2, 3])
    out = model.forward_samples(x)
    per_sample_ce = torch.stack([F.cross_entropy(out.logits[m], y) for m in range(out.logits.shape[0])])
    ce_only = strategies.clap_loss(model, out, y, [1], beta=0.0, kl_weight=0.0)
    assert torch.allclose(ce_only, per_sample_ce.mean(), atol=1e-5)
    full = strategies.clap_loss(model, out, y, [1], beta=15.0, kl_weight=1e-3)
    tasks = model.task_of_class()
    extra = (1e-3 * kl_loss(out.mu, out.sigma, tasks, [1])
             + 15.0 * language_loss(model.text_mean[:4], out.z_mean, tasks, [1]))
    assert torch.allclose(full, ce_only + extra, atol=1e-5)


# --------------------------------------------------------------------- memory
class FakeStrategy:
    def __init__(self, experience):
        self.experience = experience


def test_fixed_total_memory_shrinks_per_class_budget_and_first_k_is_nested(bench):
    memory = ClassBalancedMemory("fixed_total", size=30, selector=FirstKExemplarsSelection())
    previous = {}
    for t, experience in enumerate(bench.train_stream):
        memory.post_adapt(FakeStrategy(experience), experience)
        n_seen = 2 * (t + 1)
        budget = 30 // n_seen
        assert memory.class_budget(n_seen) == budget
        assert sorted(memory.exemplars) == list(range(n_seen))
        targets = np.asarray(list(experience.dataset.targets))
        for c, (e, indices) in memory.exemplars.items():
            assert len(indices) == budget
            if e == t:                                # first k of the class in dataset order
                assert indices == np.flatnonzero(targets == c)[:budget].tolist()
            else:                                     # nested in the previous selection
                assert indices == previous[c][:budget]
        previous = {c: idx for c, (_, idx) in memory.exemplars.items()}
        assert len(memory) == n_seen * budget <= 30
        labels = [int(y) for y in memory.buffer.targets]
        assert sorted(set(labels)) == list(range(n_seen))


def test_per_class_memory_keeps_k_per_class_and_random_selection_is_seeded(bench):
    def select(seed):
        RNGManager.set_random_seeds(seed)
        memory = ClassBalancedMemory("per_class", per_class=7)
        for experience in bench.train_stream[:3]:
            memory.post_adapt(FakeStrategy(experience), experience)
        return memory

    a, b, c = select(0), select(0), select(1)
    assert len(a) == 6 * 7
    assert a.exemplars == b.exemplars != c.exemplars
    first_k = [int(i) for i in np.flatnonzero(
        np.asarray(list(bench.train_stream[0].dataset.targets)) == 0)[:7]]
    assert a.exemplars[0][1] != first_k


def test_memory_is_an_avalanche_storage_policy_without_deprecated_calls(bench):
    from avalanche.training.storage_policy import ExemplarsBuffer

    memory = ClassBalancedMemory("fixed_total", size=30, selector=FirstKExemplarsSelection())
    assert isinstance(memory, ExemplarsBuffer) and len(memory.buffer) == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for experience in bench.train_stream[:3]:
            memory.post_adapt(FakeStrategy(experience), experience)
        before = {c: idx for c, (_, idx) in memory.exemplars.items()}
        memory.resize(FakeStrategy(None), 12)                 # 6 classes: 2 each
        assert len(memory.buffer) == 12 == len(memory) == memory.max_size
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert {c: idx for c, (_, idx) in memory.exemplars.items()} == {c: i[:2] for c, i in before.items()}


def test_unknown_selector_and_policy_are_clear_errors():
    with pytest.raises(ValueError, match="reference_first_k"):
        strategies.make_selector("herd")
    with pytest.raises(ValueError, match="per_class"):
        ClassBalancedMemory("ring")


# --------------------------------------------------------------------- methods
def test_clap_beats_zero_shot_on_the_synthetic_modality_gap(bench):
    RNGManager.set_random_seeds(0)
    zeroshot = make_strategy(bench, small_config("zeroshot"), evaluator=quiet_evaluator())
    run_stream(zeroshot, bench)
    clap = make_strategy(bench, small_config(), evaluator=quiet_evaluator())
    run_stream(clap, bench)
    zs, ours = last_accuracy(zeroshot, bench), last_accuracy(clap, bench)
    assert ours > zs + 0.15, (ours, zs)


@pytest.mark.parametrize("method", ["clap_deterministic", "clip_adapter"])
def test_baselines_beat_zero_shot_on_the_seen_classes(bench, method):
    RNGManager.set_random_seeds(0)
    zeroshot = make_strategy(bench, small_config("zeroshot"), evaluator=quiet_evaluator())
    run_stream(zeroshot, bench, stop=2)
    config = small_config(method)
    config["clip_adapter"].update(epochs=20, lr=0.1)  # the reference's lr 1e-3 needs many steps
    strategy = make_strategy(bench, config, evaluator=quiet_evaluator())
    run_stream(strategy, bench, stop=2)
    seen = bench.test_stream[:2]
    assert strategy.eval(seen)[STREAM_ACC] > zeroshot.eval(seen)[STREAM_ACC] + 0.05


def test_clip_adapter_reinitialises_only_when_asked(bench):
    for reinit in (True, False):
        config = small_config("clip_adapter")
        config["clip_adapter"]["reinit_each_experience"] = reinit
        strategy = make_strategy(bench, config, evaluator=quiet_evaluator())
        strategy.train(bench.train_stream[0])
        trained = strategy.model.adapter[0].weight.detach().clone()
        strategy.model.train()
        strategy.model.adaptation(bench.train_stream[1])
        assert torch.equal(strategy.model.adapter[0].weight, trained) is (not reinit)


@pytest.mark.parametrize("stock", ["naive", "replay"])
def test_stock_avalanche_strategies_train_the_clap_model(bench, stock):
    RNGManager.set_random_seeds(0)
    model = assemble.build_clap_model(small_config(), bench.text_features, 100.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    kwargs = dict(criterion=torch.nn.CrossEntropyLoss(), train_mb_size=32, train_epochs=2,
                  eval_mb_size=64, evaluator=quiet_evaluator())
    strategy = (Naive(model=model, optimizer=optimizer, **kwargs) if stock == "naive"
                else Replay(model=model, optimizer=optimizer, mem_size=40, **kwargs))
    zeroshot = make_strategy(bench, small_config("zeroshot"), evaluator=quiet_evaluator())
    for experience in bench.train_stream[:2]:
        with warnings.catch_warnings(record=True):   # Avalanche's Replay calls its own deprecated API
            strategy.train(experience)
        zeroshot.train(experience)
    assert model.task_sizes == [2, 2]
    trained = {id(p) for group in strategy.optimizer.param_groups for p in group["params"]}
    assert id(model.heads.mu_weight[1]) in trained
    # Naive forgets, so it is judged on the experience it just learned; Replay on all seen
    judged = bench.test_stream[1:2] if stock == "naive" else bench.test_stream[:2]
    assert strategy.eval(judged)[STREAM_ACC] > zeroshot.eval(judged)[STREAM_ACC] + 0.05


def test_evaluation_plugin_reports_accuracy_forgetting_and_bwt(bench):
    evaluator = quiet_evaluator(accuracy_metrics(experience=True, stream=True),
                                forgetting_metrics(experience=True, stream=True),
                                bwt_metrics(experience=True, stream=True))
    strategy = make_strategy(bench, small_config(), evaluator=evaluator)
    accuracies = []
    for t, experience in enumerate(bench.train_stream[:3]):
        strategy.train(experience)
        results = strategy.eval(bench.test_stream[: t + 1])
        accuracies.append([results[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{k:03d}"]
                           for k in range(t + 1)])
    forgetting = results["StreamForgetting/eval_phase/test_stream"]
    expected = np.mean([accuracies[k][k] - accuracies[2][k] for k in range(2)])
    assert forgetting == pytest.approx(expected)
    assert results["StreamBWT/eval_phase/test_stream"] == pytest.approx(-expected)
    assert 0.0 <= results[STREAM_ACC] <= 1.0


def test_avalanche_checkpoint_resumes_to_the_uninterrupted_result(bench, tmp_path):
    from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint

    config = small_config()

    def fresh():
        return make_strategy(bench, config, evaluator=quiet_evaluator())

    RNGManager.set_random_seeds(3)
    uninterrupted = fresh()
    run_stream(uninterrupted, bench)
    torch.manual_seed(0)
    expected = uninterrupted.model(torch.stack([x for x, *_ in bench.test_stream[4].dataset.eval()]))

    path = tmp_path / "checkpoint.pkl"
    RNGManager.set_random_seeds(3)
    interrupted = fresh()
    run_stream(interrupted, bench, stop=2)
    save_checkpoint(interrupted, path)
    del interrupted
    RNGManager.set_random_seeds(99)                  # the crashed process's RNG is gone
    resumed, start = maybe_load_checkpoint(fresh(), path)
    assert start == 2
    run_stream(resumed, bench, start=start)
    torch.manual_seed(0)
    got = resumed.model(torch.stack([x for x, *_ in bench.test_stream[4].dataset.eval()]))
    assert torch.equal(got, expected)
    assert resumed.memory.exemplars == uninterrupted.memory.exemplars
