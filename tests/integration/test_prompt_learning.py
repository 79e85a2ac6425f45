"""Learned prompts: exact fast text passes, CoOp = zero-shot at the phrase init, what trains,
the eval cache, CLAP + CoOp's loss by hand, training on a stream, resume."""
import json
import warnings

import pytest
import torch
import torch.nn.functional as F

import scenarios
import strategies.clap
from clap4cl.cli import main
from clap4cl.encoders.backbones import load_clip
from clap4cl.encoders.prompts import class_text_features
from clap4cl.models.clap import kl_loss, language_loss
from clap4cl.models.coop import ClapCoopModel, CoOpModel
from clap4cl.models.prompt_learner import PromptLearner
from clap4cl.models.zeroshot import ZeroShotClassifier
from clap4cl.runner.assemble import build_from_config
from clap4cl.runner.config import load_config
from strategies.clap import clap_loss

NAMES = ["cat", "aquarium fish", "sweet pepper", "lawn mower", "dog", "maple tree", "x-ray"]


@pytest.fixture(scope="module", params=["tiny-vit", "tiny-rn"])
def backbone(request):
    return load_clip(request.param)


def _weighted_sum(features):
    weights = torch.arange(features.numel(), dtype=torch.float32).reshape(features.shape).sin()
    return (features * weights).sum()


def _features_and_grad(learner, text_pass):
    learner.contexts[0].grad = None
    features = learner.encode(range(len(NAMES)), text_pass)
    _weighted_sum(features).backward()
    return features.detach(), learner.contexts[0].grad.clone()


@pytest.mark.parametrize("text_pass", ["truncated", "shared_prefix"])
def test_fast_text_passes_equal_the_full_77_token_pass(backbone, text_pass):
    torch.manual_seed(0)
    learner = PromptLearner(backbone, NAMES, n_ctx=5)
    full, full_grad = _features_and_grad(learner, "full")
    fast, fast_grad = _features_and_grad(learner, text_pass)
    assert int(learner.eot.max()) + 1 < 20                         # far fewer than 77 positions
    torch.testing.assert_close(fast, full, rtol=0, atol=2e-6)
    scale = full_grad.abs().max()
    assert scale > 0
    torch.testing.assert_close(fast_grad / scale, full_grad / scale, rtol=0, atol=1e-5)


def test_chunked_classes_give_the_same_features_with_one_encoder_call_per_chunk(backbone):
    learner = PromptLearner(backbone, NAMES, n_ctx=3)
    with torch.no_grad():
        whole = learner.encode(range(7))
        learner.text_batch, calls = 3, learner.encoder_calls
        chunked = learner.encode(range(7))
    assert learner.encoder_calls - calls == 3                      # 3 + 3 + 1 classes
    torch.testing.assert_close(chunked, whole, rtol=0, atol=2e-6)


def test_phrase_initialised_coop_is_the_single_template_zero_shot_classifier(backbone):
    learner = PromptLearner(backbone, NAMES, init="a photo of a", text_pass="full")
    assert learner.n_ctx == 4
    expected_tokens = backbone.tokenizer([f"a photo of a {n}." for n in NAMES])
    assert torch.equal(learner.tokens, expected_tokens.long())
    with torch.no_grad():
        learned = learner.encode(range(len(NAMES)))
    assert torch.equal(learned, backbone.encode_texts([f"a photo of a {n}." for n in NAMES]))

    text = class_text_features(backbone, NAMES, ["a photo of a {}."])
    zeroshot = ZeroShotClassifier(text.normalized, backbone.logit_scale)
    coop = CoOpModel(learner, backbone.logit_scale).eval()
    zeroshot.n_seen_classes = coop.n_seen_classes = len(NAMES)
    images = torch.randn(9, backbone.embed_dim)
    torch.testing.assert_close(coop(images), zeroshot(images), rtol=0, atol=1e-5)
    assert torch.equal(coop(images).argmax(1), zeroshot(images).argmax(1))
    learner.text_pass = "shared_prefix"                            # the default: same up to rounding
    learner._eval_cache = None
    torch.testing.assert_close(coop(images), zeroshot(images), rtol=0, atol=1e-4)


def test_gradients_reach_the_context_and_nothing_of_the_text_encoder(backbone):
    learner = PromptLearner(backbone, NAMES, n_ctx=4)
    coop = CoOpModel(learner, backbone.logit_scale).train()
    coop.n_seen_classes = len(NAMES)
    assert not backbone.model.training
    loss = F.cross_entropy(coop(torch.randn(6, backbone.embed_dim)), torch.arange(6))
    loss.backward()
    assert learner.contexts[0].grad is not None and learner.contexts[0].grad.abs().sum() > 0
    assert [n for n, p in coop.named_parameters()] == ["prompts.contexts.0"]
    assert all(p.grad is None and not p.requires_grad for p in backbone.model.parameters())
    assert not backbone.model.training                             # model.train() left it in eval


def test_eval_text_features_are_cached_until_the_context_changes(backbone):
    learner = PromptLearner(backbone, NAMES, n_ctx=4)
    coop = CoOpModel(learner, backbone.logit_scale)
    coop.n_seen_classes = len(NAMES)
    images = torch.randn(5, backbone.embed_dim)
    coop.eval()
    with torch.no_grad():
        first = coop(images)
        calls = learner.encoder_calls
        assert torch.equal(coop(images), first) and learner.encoder_calls == calls   # reused
    coop.train()
    optimizer = torch.optim.SGD(coop.parameters(), lr=1.0)
    for _ in range(2):                                            # one pass per training step
        before = learner.encoder_calls
        F.cross_entropy(coop(images), torch.arange(5)).backward()
        assert learner.encoder_calls == before + 1
        optimizer.step()
    coop.eval()
    with torch.no_grad():
        after = coop(images)
        assert learner.encoder_calls == before + 2                 # invalidated by the step
        coop(images)
        assert learner.encoder_calls == before + 2
    assert not torch.allclose(after, first)


def test_expandable_prompts_average_a_fresh_context_per_task(backbone):
    torch.manual_seed(0)
    learner = PromptLearner(backbone, NAMES, n_ctx=2, expandable=True)
    first = learner.contexts[0].detach().clone()
    learner.add_context()
    assert learner.n_contexts == 2 and not learner.contexts[0].requires_grad
    torch.testing.assert_close(learner.context(), (first + learner.contexts[1]) / 2)


# ---------------------------------------------------------------- CLAP + CoOp
def _synthetic(n_experiences=2, n_classes=6, dim=64):
    return scenarios.class_incremental("synthetic", n_experiences=n_experiences, level="features",
                                       dim=dim, n_classes=n_classes, train_per_class=40,
                                       test_per_class=20)


def _hand_text(learner, backbone):
    """The learned prompts' features through open_clip's own modules, the 77-token way."""
    model = backbone.model
    emb = model.token_embedding(learner.tokens).clone()
    emb[:, 1:1 + learner.n_ctx] = learner.context()
    x = model.transformer(emb + model.positional_embedding, attn_mask=model.attn_mask)
    x = model.ln_final(x)[torch.arange(len(emb)), learner.tokens.argmax(-1)] @ model.text_projection
    return F.normalize(x, dim=-1)


def test_one_clap_coop_step_has_the_hand_computed_loss_terms():
    backbone = load_clip("tiny-vit")
    stream = _synthetic(n_experiences=1, n_classes=3)
    text = stream.text_features
    learner = PromptLearner(backbone, text.class_names, n_ctx=3)
    model = ClapCoopModel(learner, text, 100.0, mc_samples=4, vga_dropout=0.0)
    assert model.vga.layer.self_attn.num_heads == 1                # D / 64 for D = 64
    model.add_task([0, 1, 2])
    model.train()
    x = F.normalize(torch.randn(5, 64), dim=-1)
    y = torch.tensor([0, 1, 2, 1, 0])
    torch.manual_seed(7)
    out = model.forward_samples(x)
    loss = clap_loss(model, out, y, [0], beta=15.0, kl_weight=1e-3)

    torch.manual_seed(7)
    t = _hand_text(learner, backbone)
    h = t + model.vga.layer(t[None], x[None], tgt_mask=torch.zeros(3, 3, dtype=torch.bool))[0]
    mu_ln, mu_lin = model.heads.mu[0]
    sd_ln, sd_lin = model.heads.sigma[0]
    mu = mu_lin(F.layer_norm(h, (64,), mu_ln.weight, mu_ln.bias))
    sigma = 0.999 * F.softplus(sd_lin(F.layer_norm(h, (64,), sd_ln.weight, sd_ln.bias))) + 0.001
    eps = torch.randn(4, 3, 64)
    logits = 100.0 * torch.einsum("bd,mcd->mbc", x, h + mu + sigma * eps)
    ce = F.cross_entropy(logits.reshape(-1, 3), y.repeat(4))
    kl = (0.5 * (sigma ** 2 + mu ** 2 - 1) - sigma.log()).sum(-1).mean()
    z_bar = mu + sigma * eps.mean(0)
    lang = F.cross_entropy(text.mean[:3] @ z_bar.T, torch.arange(3))
    torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-4)
    tasks = model.task_of_class()
    torch.testing.assert_close(kl_loss(out.mu, out.sigma, tasks, [0]), kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(language_loss(text.mean[:3], out.z_mean, tasks, [0]), lang,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, ce + 1e-3 * kl + 15.0 * lang, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert learner.contexts[0].grad.abs().sum() > 0                # through h -> VGA and heads
    assert model.vga.layer.linear1.weight.grad is not None
    assert all(p.grad is None for p in backbone.model.parameters())


@pytest.mark.parametrize("method,section,overrides", [
    ("coop", "coop", ["coop.lr=0.1"]),
    ("clap_coop", "clap", ["clap.mc_samples=4"]),
])
def test_both_methods_train_on_a_stream_and_beat_the_untrained_classifier(method, section, overrides):
    backbone = load_clip("tiny-vit")
    stream = _synthetic()
    snapshot = {k: v.clone() for k, v in backbone.model.state_dict().items()}

    def accuracy(epochs):
        config = load_config(None, [f"method={method}", f"{section}.epochs={epochs}",
                                    f"{section}.finetune_epochs={min(epochs, 1)}",
                                    "logging.progress=false", *overrides])
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from avalanche.training.plugins import EvaluationPlugin
            strategy = build_from_config(config, text_features=stream.text_features,
                                         logit_scale=100.0, evaluator=EvaluationPlugin(),
                                         backbone=backbone)
        for experience in stream.train_stream:
            strategy.train(experience)
        strategy.model.eval()
        pairs = [s for e in stream.test_stream for s in e.dataset.eval()]
        x = torch.stack([p[0] for p in pairs])
        y = torch.tensor([int(p[1]) for p in pairs])
        with torch.no_grad():
            return (strategy.model(x).argmax(1) == y).float().mean().item()

    untrained, trained = accuracy(0), accuracy(3)
    assert trained > untrained + 0.15, (untrained, trained)
    assert not backbone.model.training
    assert all(torch.equal(v, snapshot[k]) for k, v in backbone.model.state_dict().items())


def test_coop_rejects_feature_only_streams():
    from clap4cl.errors import ConfigError

    with pytest.raises(ConfigError, match="method 'coop' learns prompts through the CLIP text"):
        load_config(None, ["method=coop", "dataset.name=synthetic"])


DIGITS = ["--set", "dataset.n_experiences=5", "--set", "logging.tensorboard=false",
          "--set", "clap.epochs=1", "--set", "clap.finetune_epochs=1", "--set", "clap.mc_samples=3",
          "--set", "coop.epochs=1", "--set", "coop.finetune_epochs=1"]


@pytest.mark.parametrize("method", ["coop", "clap_coop"])
def test_the_cli_runs_the_method_on_digits_with_novelty_per_step(tmp_path, monkeypatch, method):
    monkeypatch.setenv("CLAP4CL_CACHE", str(tmp_path / "cache"))
    assert main(["run", "--quiet", "--output", str(tmp_path / "run"), "--set", f"method={method}",
                 *DIGITS]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["method"] == method and results["completed_experiences"] == 5
    assert [n["step"] for n in results["novelty"]] == [0, 1, 2, 3]
    assert all(0 <= n["auroc"] <= 1 for n in results["novelty"])
    # the checkpoint holds the learned context but not the text tower (12 MB of embeddings)
    assert (tmp_path / "run" / "checkpoint.pkl").stat().st_size < 4_000_000


def test_a_clap_coop_run_resumed_mid_stream_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    monkeypatch.setenv("CLAP4CL_CACHE", str(tmp_path / "cache"))
    args = ["--set", "method=clap_coop", *DIGITS]
    assert main(["run", "--quiet", "--output", str(tmp_path / "whole"), *args]) == 0
    real_loss = strategies.clap.clap_loss

    def diverging(model, out, targets, tasks, **kwargs):
        loss = real_loss(model, out, targets, tasks, **kwargs)
        return loss * float("nan") if model.heads.n_tasks == 2 else loss

    monkeypatch.setattr(strategies.clap, "clap_loss", diverging)
    assert main(["run", "--quiet", "--output", str(tmp_path / "cut"), *args]) == 2
    monkeypatch.setattr(strategies.clap, "clap_loss", real_loss)
    assert main(["run", "--quiet", "--output", str(tmp_path / "cut"), *args]) == 0

    def without_timing(run):
        results = json.loads((tmp_path / run / "results.json").read_text())
        results.pop("timing")
        return results

    assert without_timing("cut") == without_timing("whole")
