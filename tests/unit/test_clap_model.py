"""The CLAP model's math against hand computations on tiny tensors."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from clap4cl import ClapModel, ClassTextFeatures
from clap4cl.models.clap import (
    GaussianTaskHeads,
    VisualGuidedAttention,
    kl_loss,
    kl_to_standard_normal,
    language_init,
    language_loss,
    task_block_mask,
)
from clap4cl.models.masking import UNSEEN_LOGIT

DIM = 8


def text_stats(n_classes=6, n_templates=3, dim=DIM, seed=0):
    gen = torch.Generator().manual_seed(seed)
    per_template = torch.randn(n_classes, n_templates, dim, generator=gen)
    return ClassTextFeatures.from_per_template(per_template, [f"c{i}" for i in range(n_classes)])


def experience(classes):
    return SimpleNamespace(classes_in_this_experience=list(classes))


def grown_model(task_classes=((0, 1), (2, 3, 4)), seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("vga_ffn_dim", 16)
    model = ClapModel(text_stats(), logit_scale=10.0, **kwargs)
    model.train()
    for classes in task_classes:
        model.adaptation(experience(classes))
    return model.eval()


def test_task_block_mask_forbids_exactly_cross_task_pairs():
    mask = task_block_mask(torch.tensor([0, 0, 1, 1, 1]))
    expected = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 0, 0, 0],
                             [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("context", ["batch", "per_image"])
def test_vga_queries_of_one_task_ignore_other_tasks_queries(context):
    torch.manual_seed(0)
    vga = VisualGuidedAttention(DIM, heads=2, ffn_dim=16).eval()
    tasks = torch.tensor([0, 0, 1, 1, 1])
    queries, images = torch.randn(5, DIM), torch.randn(4, DIM)
    changed = queries.clone()
    changed[2:] = torch.randn(3, DIM)               # only task 1's queries change
    before = vga(queries, images, tasks, context)
    after = vga(changed, images, tasks, context)
    assert torch.allclose(before[..., :2, :], after[..., :2, :], atol=1e-6)
    assert not torch.allclose(before[..., 2:, :], after[..., 2:, :], atol=1e-3)
    # without the mask, task 0's outputs would move
    unmasked = VisualGuidedAttention(DIM, heads=2, ffn_dim=16).eval()
    unmasked.load_state_dict(vga.state_dict())
    free = torch.zeros(5, dtype=torch.long)
    assert not torch.allclose(unmasked(queries, images, free, context)[..., :2, :],
                              unmasked(changed, images, free, context)[..., :2, :], atol=1e-3)


def test_per_image_context_equals_batch_context_of_a_single_image():
    torch.manual_seed(1)
    vga = VisualGuidedAttention(DIM, heads=2, ffn_dim=16).eval()
    tasks = torch.tensor([0, 0, 1])
    queries, images = torch.randn(3, DIM), torch.randn(4, DIM)
    per_image = vga(queries, images, tasks, "per_image")
    for b in range(4):
        single = vga(queries, images[b:b + 1], tasks, "batch")
        assert torch.allclose(per_image[b], single, atol=1e-5)


def test_factored_first_feed_forward_layer_equals_linear_of_the_layer_norm():
    """The per-image VGA never forms linear1(norm2(x_c + k_b)) per pair, yet equals it."""
    torch.manual_seed(2)
    vga = VisualGuidedAttention(64, ffn_dim=32).eval()
    with torch.no_grad():                       # a non-trivial LayerNorm affine part
        vga.layer.norm2.weight.normal_()
        vga.layer.norm2.bias.normal_()
    x, k = torch.randn(5, 64), 3 * torch.randn(7, 64)
    layer = vga.layer
    direct = layer.linear1(layer.norm2(x[None] + k[:, None]))
    factored = vga._factored_linear1(vga._query_side(x), k)
    assert factored.shape == (7, 5, 32)
    assert torch.allclose(factored, direct, atol=1e-5)


def test_language_loss_closed_form_equals_reference_double_loop():
    torch.manual_seed(2)
    n_classes, n_templates, n_samples = 5, 4, 7
    e = F.normalize(torch.randn(n_classes, n_templates, DIM), dim=-1)
    z = torch.randn(n_samples, n_classes, DIM)
    tasks = torch.tensor([0, 0, 1, 1, 1])
    expected = torch.zeros(())
    for k in (0, 1):
        members = (tasks == k).nonzero().squeeze(1).tolist()
        a = torch.zeros(len(members), len(members))
        for i, c in enumerate(members):
            for j, c2 in enumerate(members):
                for m in range(n_samples):
                    for l in range(n_templates):
                        a[i, j] += e[c, l] @ z[m, c2] / (n_samples * n_templates)
        expected = expected + F.cross_entropy(a, torch.arange(len(members)))
    got = language_loss(e.mean(1), z.mean(0), tasks, tasks=[0, 1])
    assert torch.allclose(got, expected, atol=1e-5)
    only_second = language_loss(e.mean(1), z.mean(0), tasks, tasks=[1])
    assert only_second < got


def test_kl_matches_elementwise_formula_and_torch_distributions():
    torch.manual_seed(3)
    mu = torch.randn(5, DIM)
    sigma = torch.rand(5, DIM) + 0.1
    elementwise = kl_to_standard_normal(mu, sigma)
    for c in range(5):
        for d in range(DIM):
            m, s = mu[c, d].item(), sigma[c, d].item()
            assert elementwise[c, d].item() == pytest.approx((s * s + m * m - 1) / 2 - math.log(s), abs=1e-5)
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sigma),
                                                  torch.distributions.Normal(0.0, 1.0))
    assert torch.allclose(elementwise, reference, atol=1e-5)
    tasks = torch.tensor([0, 0, 1, 1, 1])
    per_class = reference.sum(1)
    assert torch.allclose(kl_loss(mu, sigma, tasks, [0, 1]), per_class[:2].mean() + per_class[2:].mean())
    assert torch.allclose(kl_loss(mu, sigma, tasks, [1]), per_class[2:].mean())
    batch = kl_loss(mu.expand(3, -1, -1), sigma.expand(3, -1, -1), tasks, [0, 1])
    assert torch.allclose(batch, per_class[:2].mean() + per_class[2:].mean())


def test_language_init_weights_are_gram_matrices_over_seen_classes():
    text = text_stats()
    model = grown_model(init_from_language=True)
    e_bar, v = text.mean[:5], text.variance[:5]
    expected_mu = torch.zeros(DIM, DIM)
    expected_sigma = torch.zeros(DIM, DIM)
    for c in range(5):                               # "all" seen classes, the reference
        expected_mu += torch.outer(e_bar[c], e_bar[c]) / DIM
        expected_sigma += torch.outer(v[c], v[c]) / DIM
    assert torch.allclose(model.heads.mu_weight[1], expected_mu, atol=1e-6)
    assert torch.allclose(model.heads.sigma_weight[1], expected_sigma, atol=1e-6)
    w_mu, _ = language_init(text.mean[2:5], text.variance[2:5])
    new_only = grown_model(language_init_classes="new")
    assert torch.allclose(new_only.heads.mu_weight[1], w_mu, atol=1e-6)


def test_single_template_initialises_without_nan():
    torch.manual_seed(0)
    model = ClapModel(text_stats(n_templates=1), 10.0, vga_ffn_dim=16)
    model.train()
    model.adaptation(experience([0, 1]))
    model.eval()
    assert torch.isfinite(model.heads.sigma_weight[0]).all()
    assert torch.isfinite(model(torch.randn(3, DIM))).all()


def looped_heads(heads, h):
    """The heads' (μ, σ) computed task by task with a Python loop: the oracle of the batched
    product (``benchmarks/bench_clap.py`` times the same loop)."""
    mus, sigmas, start = [], [], 0
    for k, size in enumerate(heads.sizes):
        part = h[..., start:start + size, :]
        mus.append(part @ heads.mu_weight[k].T + heads.mu_bias[k])
        if heads.variational:
            pre = part @ heads.sigma_weight[k].T + heads.sigma_bias[k]
            sigmas.append(0.999 * F.softplus(pre) + 0.001)
        start += size
    return torch.cat(mus, dim=-2), torch.cat(sigmas, dim=-2) if heads.variational else None


def test_batched_heads_equal_per_task_loop_with_unequal_tasks():
    torch.manual_seed(4)
    heads = GaussianTaskHeads(DIM)
    for size in (2, 3, 1, 4):
        heads.add_task(size)
    for h in (torch.randn(10, DIM), torch.randn(6, 10, DIM)):
        mu, sigma = heads(h)
        mu_loop, sigma_loop = looped_heads(heads, h)
        assert torch.allclose(mu, mu_loop, atol=1e-5)
        assert torch.allclose(sigma, sigma_loop, atol=1e-5)
        assert (sigma > 0.001 - 1e-7).all()
    start = 0
    for k, size in enumerate(heads.sizes):             # and equal the task's own Linear
        part = h[..., start:start + size, :]
        assert torch.allclose(mu[..., start:start + size, :],
                              part @ heads.mu_weight[k].T + heads.mu_bias[k], atol=1e-5)
        start += size


def test_cached_head_stacks_follow_parameter_updates():
    torch.manual_seed(6)
    heads = GaussianTaskHeads(DIM)
    for size in (2, 3):
        heads.add_task(size)
    h = torch.randn(5, DIM)
    with torch.no_grad():
        heads(h)                                          # fills the cache
        heads.mu_weight[0].add_(1.0)                      # e.g. an optimizer step
        heads.sigma_bias[1].mul_(2.0)
        mu, sigma = heads(h)
    mu_loop, sigma_loop = looped_heads(heads, h)
    assert torch.allclose(mu, mu_loop, atol=1e-5) and torch.allclose(sigma, sigma_loop, atol=1e-5)
    other = GaussianTaskHeads(DIM)
    for size in (2, 3):
        other.add_task(size)
    with torch.no_grad():
        heads.load_state_dict(other.state_dict())
        assert torch.allclose(heads(h)[0], looped_heads(other, h)[0], atol=1e-5)

@pytest.mark.parametrize("trainable", [[3], [0, 3], [1, 2]])
def test_frozen_heads_give_the_same_outputs_and_only_trainable_heads_get_gradients(trainable):
    torch.manual_seed(7)
    heads = GaussianTaskHeads(DIM)
    for size in (2, 2, 2, 2):
        heads.add_task(size)
    h = torch.randn(3, 8, DIM, requires_grad=True)
    heads.set_trainable(range(4))
    mu_all, sigma_all = heads(h)
    (grad_all,) = torch.autograd.grad((mu_all.sum() + sigma_all.sum()), h)
    heads.set_trainable(trainable)
    for _ in range(2):                                    # second pass: from the cached stack
        mu, sigma = heads(h)
        assert torch.equal(mu, mu_all) and torch.equal(sigma, sigma_all)
        params = [p for p in heads.parameters() if p.requires_grad]
        grads = torch.autograd.grad(mu.sum() + sigma.sum(), [h] + params)
        assert torch.allclose(grads[0], grad_all, atol=1e-6)
        assert len(params) == 4 * len(trainable)
    with torch.no_grad():                                 # an update of a frozen head is seen
        heads.mu_weight[1 if 1 not in trainable else 0].add_(1.0)
    mu_loop, _ = looped_heads(heads, h.detach())
    assert torch.allclose(heads(h)[0], mu_loop, atol=1e-5)



@pytest.mark.parametrize("context", ["batch", "per_image"])
def test_logits_equal_tau_times_image_dot_refined_text_plus_sample(context):
    model = grown_model(eval_context=context, mc_samples=4)
    x = torch.randn(3, DIM)
    torch.manual_seed(7)
    out = model.forward_samples(x)
    torch.manual_seed(7)
    eps = torch.randn(4, 5, DIM)                        # the draw forward_samples made
    x_hat = F.normalize(x, dim=-1)
    h = model.refined_text(x_hat)
    mu, sigma = model.heads(h)
    if context == "batch":
        h, mu, sigma = (t.expand(3, -1, -1) for t in (h, mu, sigma))
    expected = torch.zeros(4, 3, 5)
    for m in range(4):
        for b in range(3):
            for c in range(5):
                z = mu[b, c] + sigma[b, c] * eps[m, c]
                expected[m, b, c] = 10.0 * x_hat[b] @ (h[b, c] + z)
    assert torch.allclose(out.logits, expected, atol=1e-4)
    assert torch.allclose(out.z_mean, (mu + sigma * eps.mean(0))[0 if context == "batch" else slice(None)],
                          atol=1e-5)


def test_forward_is_the_sample_mean_shortcut():
    model = grown_model(mc_samples=16)
    x = torch.randn(3, DIM)
    torch.manual_seed(5)
    logits = model(x)
    torch.manual_seed(5)
    eps_bar = torch.randn(5, DIM) / 4.0                 # N(0, I/M), M = 16
    x_hat = F.normalize(x, dim=-1)
    h = model.refined_text(x_hat)
    mu, sigma = model.heads(h)
    expected = 10.0 * torch.einsum("bd,bcd->bc", x_hat, h + mu + sigma * eps_bar)
    assert logits.shape == (3, 6)                        # every class with text: 5 seen + 1
    assert torch.allclose(logits[:, :5], expected, atol=1e-4)
    assert torch.equal(logits[:, 5:], torch.full((3, 1), UNSEEN_LOGIT))
    # the same expectation as averaging M sampled logits
    many = torch.stack([model.forward_samples(x).mean_logits for _ in range(200)]).mean(0)
    assert torch.allclose(many, 10.0 * torch.einsum("bd,bcd->bc", x_hat, h + mu), atol=0.5)


def test_deterministic_heads_use_the_mean_only():
    model = grown_model(variational=False)
    x = torch.randn(3, DIM)
    out = model.forward_samples(x)
    assert out.sigma is None and out.logits.shape == (1, 3, 5)
    assert torch.equal(model(x), model(x))
    assert len(model.heads.sigma_weight) == 0


def test_per_image_outputs_ignore_batch_mates_and_reference_outputs_do_not():
    x = torch.randn(4, DIM)
    other = x.clone()
    other[1:] = torch.randn(3, DIM)                    # every sample but the first changes
    per_image = grown_model(eval_context="per_image", variational=False)
    assert torch.allclose(per_image(x)[0], per_image(other)[0], atol=1e-6)
    batch = grown_model(eval_context="batch", variational=False)
    assert not torch.allclose(batch(x)[0], batch(other)[0], atol=1e-3)


def test_adaptation_grows_heads_and_freezes_older_ones_only_when_asked():
    model = grown_model(task_classes=((0, 1), (2, 3, 4), (5,)), freeze_old_heads=True)
    assert model.task_sizes == [2, 3, 1]
    assert model(torch.randn(2, DIM)).shape == (2, 6)
    assert [p.requires_grad for p in model.heads.mu_weight] == [False, False, True]
    assert [p.requires_grad for p in model.heads.sigma_bias] == [False, False, True]
    stock = grown_model(task_classes=((0, 1), (2, 3, 4), (5,)))
    assert stock.freeze_old_heads is False
    assert [p.requires_grad for p in stock.heads.mu_weight] == [True, True, True]
    assert [p.requires_grad for p in stock.heads.sigma_weight] == [True, True, True]
    fresh = ClapModel(text_stats(), 10.0, vga_ffn_dim=16, freeze_old_heads=True)
    fresh.load_state_dict(stock.state_dict())            # a checkpoint follows the option too
    assert [p.requires_grad for p in fresh.heads.mu_weight] == [False, False, True]
    model.eval()
    model.adaptation(experience([5]))                  # evaluation never grows the model
    assert model.task_sizes == [2, 3, 1]
    with pytest.raises(ValueError, match="contiguous"):
        model.add_task([4, 7])


def test_state_dict_round_trip_into_a_fresh_model():
    model = grown_model(variational=True)
    fresh = ClapModel(text_stats(), 10.0, vga_ffn_dim=16).eval()
    fresh.load_state_dict(model.state_dict())
    assert fresh.task_sizes == [2, 3]
    x = torch.randn(3, DIM)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(0)
    assert torch.equal(a, fresh(x))


def test_image_inputs_go_through_the_encoder():
    class Encoder:
        def encode_images(self, images):
            return images.flatten(1)[:, :DIM]

    model = grown_model(variational=False)
    model.image_encoder = Encoder()
    images = torch.randn(2, 3, 4, 4)
    assert torch.allclose(model(images), model(images.flatten(1)[:, :DIM]))
    model.image_encoder = None
    with pytest.raises(ValueError, match="image_encoder"):
        model(images)


def models_with_an_image_encoder(encoder):
    from clap4cl import CLIPAdapterModel, ZeroShotClassifier

    dim = encoder.embed_dim
    text = text_stats(n_classes=4, dim=dim)
    clap = ClapModel(text, 10.0, vga_ffn_dim=16, variational=False, image_encoder=encoder)
    adapter = CLIPAdapterModel(text.normalized, 10.0, image_encoder=encoder)
    zeroshot = ZeroShotClassifier(text.normalized, 10.0, image_encoder=encoder)
    for model in (clap, adapter, zeroshot):
        model.train()
        model.adaptation(experience([0, 1]))
        model.eval()
    return {"clap": clap, "adapter": adapter, "zeroshot": zeroshot}


@pytest.mark.parametrize("kind", ["clap", "adapter", "zeroshot"])
def test_the_frozen_encoder_is_in_no_state_dict_nor_parameters(kind, tiny_backbone):
    model = models_with_an_image_encoder(tiny_backbone)[kind]
    encoder = {t.data_ptr() for t in [*tiny_backbone.parameters(), *tiny_backbone.buffers()]}
    state = model.state_dict()
    assert not [k for k in state if k.startswith("image_encoder") or ".model.visual." in k]
    assert not [k for k, v in state.items() if torch.is_tensor(v) and v.data_ptr() in encoder]
    assert not [p for p in model.parameters() if p.data_ptr() in encoder]
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in tiny_backbone.parameters())
    images = torch.randn(2, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    logits = model(images)                                  # images still go through it
    features = tiny_backbone.encode_images(images)
    assert logits.shape == (2, 4) and torch.allclose(logits, model(features), atol=1e-5)
    assert torch.equal(logits[:, 2:], torch.full((2, 2), UNSEEN_LOGIT))   # 2 of 4 classes seen


@pytest.mark.parametrize("kind", ["clap", "adapter", "zeroshot"])
def test_a_deep_copy_shares_the_frozen_encoder_and_copies_the_rest(kind, tiny_backbone):
    import copy

    model = models_with_an_image_encoder(tiny_backbone)[kind]
    twin = copy.deepcopy(model)
    assert twin.image_encoder is tiny_backbone
    assert twin.class_features is not model.class_features
    assert all(a is not b for a, b in zip(twin.parameters(), model.parameters()))
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(1.0)                                 # the copy trains on its own
    if kind != "zeroshot":
        assert not torch.equal(next(twin.parameters()), next(model.parameters()))
    images = torch.randn(2, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    assert twin(images).shape == (2, 4)


@pytest.mark.parametrize("kind", ["clap", "adapter", "zeroshot"])
def test_evaluating_before_any_training_is_a_one_line_error(kind):
    from clap4cl import CLIPAdapterModel, ZeroShotClassifier

    text = text_stats(n_classes=4)
    model = {"clap": lambda: ClapModel(text, 10.0, vga_ffn_dim=16),
             "adapter": lambda: CLIPAdapterModel(text.normalized, 10.0),
             "zeroshot": lambda: ZeroShotClassifier(text.normalized, 10.0)}[kind]().eval()
    with pytest.raises(RuntimeError, match=r"^the model has no classes yet: train on an experience first"):
        model(torch.randn(2, DIM))


def test_device_moves_reach_the_frozen_encoder_and_dtype_moves_do_not():
    from clap4cl import load_clip

    encoder = load_clip("tiny-vit")                         # its own: it is moved below
    model = models_with_an_image_encoder(encoder)["clap"]
    model.to(torch.float64)
    assert model.class_features.dtype == torch.float64 and encoder.dtype == torch.float32
    model.to("meta")
    assert model.class_features.device.type == "meta" and encoder.device.type == "meta"


@pytest.mark.parametrize("kind", ["clap", "adapter", "zeroshot"])
def test_the_toolkit_s_sample_logits_are_over_the_seen_classes(kind, tiny_backbone):
    from clap4cl.evaluation.scores import sample_logits

    model = models_with_an_image_encoder(tiny_backbone)[kind]
    x = torch.randn(3, tiny_backbone.embed_dim)
    assert model(x).shape == (3, 4)
    samples = sample_logits(model, x)
    assert samples.shape[0] == 3 and samples.shape[2] == 2 and (samples > UNSEEN_LOGIT).all()
    if kind != "clap":
        assert torch.equal(samples[:, 0], model(x)[:, :2])


def test_test_stream_experiences_never_add_classes_even_in_train_mode():
    """Avalanche's GDumb adapts its kept initial model (in train mode) to evaluated
    experiences; a future test experience must not become seen that way."""
    model = grown_model(task_classes=((0, 1),)).train()
    test_experience = SimpleNamespace(classes_in_this_experience=[2, 3, 4],
                                      origin_stream=SimpleNamespace(name="test"))
    model.adaptation(test_experience)
    assert model.task_sizes == [2]
    test_experience.origin_stream.name = "train"
    model.adaptation(test_experience)
    assert model.task_sizes == [2, 3]


@pytest.mark.parametrize("variational, n_samples, present",
                         [(True, None, None), (True, 0, None), (False, None, None),
                          (True, 3, (True, False)), (True, None, (False, True)), (False, None, (False, False))])
def test_per_image_evaluation_in_chunks_equals_the_whole_batch(monkeypatch, variational, n_samples,
                                                               present):
    """Also without guidance (heads once on t) and without the image (one null-image row)."""
    import clap4cl.models.clap.model as clap_model

    model = grown_model(eval_context="per_image", mc_samples=4, variational=variational)
    model.set_null_image(torch.randn(DIM))
    x = torch.randn(7, DIM)
    present = None if present is None else torch.tensor([present]).expand(7, 2)
    torch.manual_seed(3)
    whole = model.forward_samples(x, n_samples, present=present)      # autograd on: one pass
    next_draw_whole = torch.randn(())
    monkeypatch.setattr(clap_model, "EVAL_CHUNK_PAIRS", 2 * model.n_seen_classes)
    torch.manual_seed(3)
    with torch.no_grad():                                               # chunks of 2 images
        chunked = model.forward_samples(x, n_samples, present=present)
    assert torch.randn(()) == next_draw_whole                          # the same draws consumed
    assert chunked.logits.shape == whole.logits.shape
    assert torch.allclose(chunked.logits, whole.logits, atol=1e-6)
    assert torch.allclose(chunked.mu, whole.mu, atol=1e-6)
    for a, b in ((chunked.sigma, whole.sigma), (chunked.eps_mean, whole.eps_mean)):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-6))


def test_per_image_observers_see_every_chunk_with_what_forms_its_logits(monkeypatch):
    """An observer of a guided per-image evaluation gets each chunk's images, base logits
    τ⟨x̂, h + μ⟩ and σ: with the same ε, base + noise_scores rebuilds the logits."""
    import clap4cl.models.clap.model as clap_model

    model = grown_model(eval_context="per_image", mc_samples=4)
    monkeypatch.setattr(clap_model, "EVAL_CHUNK_PAIRS", 2 * model.n_seen_classes)
    x = F.normalize(torch.randn(7, DIM), dim=-1)
    seen = []
    with torch.no_grad():
        with model.observing_per_image(lambda *chunk: seen.append(chunk)):
            out = model.sample(x, generator=torch.Generator().manual_seed(5))
        model.sample(x)                                                # no longer observed
    assert [len(images) for images, _, _ in seen] == [2, 2, 2, 1]
    assert torch.equal(torch.cat([images for images, _, _ in seen]), x)
    eps = model.draw_eps(torch.Generator().manual_seed(5))
    rebuilt = torch.cat([base[None] + model.noise_scores(images, sigma, eps)
                         for images, base, sigma in seen], 1)
    assert torch.allclose(rebuilt, out.logits, atol=1e-6)
    assert torch.allclose(model.log_predictive(out.logits),
                          model.head({"image": x}, generator=torch.Generator().manual_seed(5)))
