"""The per-phase thread policy (``threads`` config key): explicit counts, user presets, auto."""
import json

import pytest
import torch

from clap4cl.errors import ConfigError
from clap4cl.runner import experiment, threads
from clap4cl.runner.config import load_config


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    for name in threads.THREAD_ENV:
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    threads.record_torch_default()
    yield
    torch.set_num_threads(before)


def test_an_explicit_count_is_used_in_every_phase_and_restored_after():
    before = torch.get_num_threads()
    for phase in threads.PHASES:
        assert threads.threads_for(phase, 3) == 3
        with threads.phase_threads(phase, 3):
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == before


def test_a_preset_omp_num_threads_is_left_alone(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert threads.threads_for("train", "auto") is None
    with threads.phase_threads("train", "auto"):
        assert torch.get_num_threads() == 2


def test_an_earlier_set_num_threads_is_left_alone(monkeypatch):
    monkeypatch.setattr(threads, "_torch_default", 4)
    torch.set_num_threads(3)                  # the user changed torch's default of 4
    assert threads.user_chose_threads()
    with threads.phase_threads("train", "auto"):
        assert torch.get_num_threads() == 3


def test_auto_uses_all_cores_to_extract_and_one_thread_on_small_heads(monkeypatch):
    monkeypatch.setattr(threads, "_torch_default", torch.get_num_threads())
    assert threads.threads_for("extract", "auto", cores=8) == 8
    assert threads.threads_for("train", "auto", cores=8, load=0.0) == 1
    assert threads.threads_for("eval", "auto", cores=8, load=0.0) == 1
    assert threads.threads_for("train", "auto", heavy=True, cores=8, load=0.5) == 2
    assert threads.threads_for("train", "auto", heavy=True, cores=8, load=9.0) == 1  # busy
    assert threads.threads_for("train", "auto", heavy=True, cores=1, load=0.0) == 1


def test_auto_gives_heavy_phases_two_threads_only_when_cores_sit_idle(monkeypatch):
    monkeypatch.setattr(threads, "_torch_default", torch.get_num_threads())
    monkeypatch.setattr(threads, "idle_cores", lambda: 1.9)
    assert threads.threads_for("eval", "auto", heavy=True, cores=2) == 2
    assert threads.threads_for("eval", "auto", heavy=False, cores=2) == 1
    monkeypatch.setattr(threads, "idle_cores", lambda: 0.8)           # one core taken by others
    assert threads.threads_for("train", "auto", heavy=True, cores=2) == 1
    monkeypatch.setattr(threads, "idle_cores", lambda: None)          # cannot tell: stay small
    assert threads.threads_for("train", "auto", heavy=True, cores=2) == 1


def test_idle_cores_counts_the_idle_share_of_all_cpu_ticks(monkeypatch):
    ticks = iter([(100, 1000), (130, 1100)])                  # 30 of 100 ticks idle
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(ticks))
    monkeypatch.setattr(threads, "_cpus", lambda: 4)
    assert threads.idle_cores(interval=0) == pytest.approx(1.2)
    monkeypatch.undo()
    real = threads.idle_cores(interval=0.05)                  # this machine, whatever its load
    assert real is None or 0.0 <= real <= threads._cpus()


def test_heavy_heads_threshold():
    assert not threads.heavy_heads(32, 100, 512)           # CLAP at CIFAR-100, ViT-B: 8.4e8 MACs
    assert threads.heavy_heads(256, 200, 1024)             # 5.4e10 MACs
    assert not threads.heavy_heads(0, 100, 512)


@pytest.mark.parametrize("value", [0, -1, "many", 1.5, True])
def test_bad_thread_settings_are_one_line_config_errors(value):
    with pytest.raises(ConfigError, match=r"^threads = .* is not valid: use auto or a positive integer$"):
        load_config(None, [f"threads={json.dumps(value)}"])


@pytest.mark.parametrize("value", ["auto", 1, 4])
def test_good_thread_settings_validate(value):
    assert load_config(None, [f"threads={json.dumps(value)}"])["threads"] == value


def test_a_run_trains_and_evaluates_with_the_policy_count(tmp_path, monkeypatch):
    seen = {"train": set(), "eval": set()}
    real_build, real_eval = experiment.build_strategy, experiment.evaluate_step

    def build(*args, **kwargs):
        strategy = real_build(*args, **kwargs)
        train = strategy.train

        def counting_train(*a, **k):
            seen["train"].add(torch.get_num_threads())
            return train(*a, **k)

        strategy.train = counting_train
        return strategy

    def evaluate(*args, **kwargs):
        seen["eval"].add(torch.get_num_threads())
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(experiment, "build_strategy", build)
    monkeypatch.setattr(experiment, "evaluate_step", evaluate)
    config = load_config(None, [
        "dataset.name=synthetic", "dataset.n_experiences=2", "logging.tensorboard=false",
        "clap.epochs=1", "clap.finetune_epochs=0", "threads=3",
        'dataset.options={"n_classes": 4, "train_per_class": 8, "test_per_class": 4}'])
    before = torch.get_num_threads()
    experiment.run_experiment(config, tmp_path / "run", progress=False)
    assert seen == {"train": {3}, "eval": {3}}
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("method, section", [("clap", "clap"), ("clap_deterministic", "clap"),
                                             ("clap_coop", "clap"), ("coop", "coop"),
                                             ("clip_adapter", "clip_adapter")])
def test_heavy_heads_read_the_batch_size_the_method_trains_with(method, section):
    from types import SimpleNamespace

    config = load_config(None, [f"method={method}", f"{section}.batch_size=4096", "clap.vga=false"])
    text = SimpleNamespace(mean=torch.zeros(100, 512))
    assert threads.run_training_is_heavy(config, 100, text)       # 4096·100·512² ≈ 1.1e11 MACs
    config[section]["batch_size"] = 1
    assert not threads.run_training_is_heavy(config, 100, text)
    assert not threads.run_training_is_heavy(load_config(None, ["method=zeroshot"]), 100, text)


def test_per_image_evaluation_of_clap_counts_the_vga_work_per_image_class_pair():
    from types import SimpleNamespace

    text = SimpleNamespace(mean=torch.zeros(100, 512))
    config = load_config(None, ["method=clap", "eval.context=per_image", "eval.batch_size=128"])
    assert threads.run_eval_is_heavy(config, 100, text)         # 128·100·512·3072 ≈ 2e10
    config["eval"]["context"] = "reference"                     # the batch is one context
    assert not threads.run_eval_is_heavy(config, 100, text)
    small = load_config(None, ["method=clap", "eval.context=per_image", "eval.batch_size=8"])
    assert not threads.run_eval_is_heavy(small, 10, SimpleNamespace(mean=torch.zeros(10, 64)))


def test_clap_training_counts_the_vga_pass_over_the_classes():
    from types import SimpleNamespace

    config = load_config(None, ["method=clap"])                 # batch 32: small heads work
    assert threads.run_training_is_heavy(config, 100, SimpleNamespace(mean=torch.zeros(100, 512)))
    assert not threads.run_training_is_heavy(config, 10, SimpleNamespace(mean=torch.zeros(10, 128)))
    config["clap"]["vga"] = False
    assert not threads.run_training_is_heavy(config, 100, SimpleNamespace(mean=torch.zeros(100, 512)))
