"""The multimodal protocol and the regularisers' math (docs/multimodal-plugins.md; unit tests)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from avalanche.training import Naive

from clap4cl import ClapModel
from clap4cl.evaluation.modality_metrics import ReliabilityAccumulator, class_prior_probe, metric_pairs
from clap4cl.models.modality_subsets import (all_nested, all_nonempty, leave_one_out, nested_chain,
                                      policy_pairs)
from clap4cl.models.multi_encoder import MultiEncoderClassifier
from clap4cl.models.multimodal import MultimodalClassifier, step_features, step_present
from clap4cl.evaluation.modality_metrics import LossTermsMetric
from strategies import CMLPlugin, MADPlugin, ModalityDropoutPlugin
from strategies.plugins.regularizer import record_loss_term
from strategies.multimodal_step import MultimodalStep
from clap4cl.evaluation.attribution import attribution_shares, grad_x_input, shares_from_scores, target_ratio
from strategies.plugins.cml import cml_hinge, confidence
from strategies.plugins.mad import entropy_weights, mad_loss
from strategies.plugins.mar import MARPlugin, discrepancy, masked_mean_ce, weak_set

from test_clap_model import experience, text_stats

DIMS = {"a": 8, "b": 8}


def multi_encoder(fusion, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = MultiEncoderClassifier(DIMS, 4, fusion=fusion, **kwargs)
    model.train()
    model.adaptation(experience(range(4)))
    return model.eval()


def clap_stub(seed=0, variational=False):
    torch.manual_seed(seed)
    model = ClapModel(text_stats(n_classes=4, dim=16), logit_scale=10.0, vga_ffn_dim=16,
                      variational=variational, mc_samples=3, eval_context="batch")
    model.train()
    model.adaptation(experience([0, 1]))
    model.adaptation(experience([2, 3]))
    model.set_null_image(torch.ones(16))
    return model.eval()


def inputs(batch=6, seed=1):
    return torch.randn(batch, 16, generator=torch.Generator().manual_seed(seed))


ALL_MODELS = [lambda: multi_encoder("late"), lambda: multi_encoder("concat"),
              lambda: multi_encoder("concat", fill="mean"), lambda: multi_encoder("concat", fill="learned"),
              clap_stub]


# ---------------------------------------------------------------- protocol conformance
@pytest.mark.parametrize("make", ALL_MODELS)
def test_forward_equals_head_of_encode_and_all_true_equals_none(make):
    model = make()
    x = inputs()
    assert isinstance(model, MultimodalClassifier)
    feats = model.encode(x)
    head = model.head(feats)
    assert torch.allclose(F.log_softmax(model(x), -1), F.log_softmax(head, -1), atol=1e-5)
    everything = torch.ones(len(x), model.n_modalities, dtype=torch.bool)
    assert torch.allclose(model.head(feats, everything), head, atol=1e-6)


def test_late_fusion_one_modality_logits_are_that_branch_term():
    model = multi_encoder("late")
    feats = model.encode(inputs())
    only_a = torch.tensor([[True, False]]).expand(6, -1)
    expected = model.heads["a"](feats["a"]) + model.bias
    assert torch.allclose(model.head(feats, only_a), expected, atol=1e-6)


def test_concat_zero_fill_equals_zero_features():
    model = multi_encoder("concat")
    feats = model.encode(inputs())
    only_a = torch.tensor([[True, False]]).expand(6, -1)
    zeroed = {"a": feats["a"], "b": torch.zeros_like(feats["b"])}
    assert torch.allclose(model.head(feats, only_a), model.head(zeroed), atol=1e-6)


def test_per_sample_masks_and_errors():
    model = multi_encoder("concat")
    feats = model.encode(inputs(batch=2))
    mixed = torch.tensor([[True, False], [False, True]])
    rows = [model.head({k: v[i:i + 1] for k, v in feats.items()}, mixed[i:i + 1]) for i in range(2)]
    assert torch.allclose(model.head(feats, mixed), torch.cat(rows), atol=1e-6)
    with pytest.raises(ValueError, match="at least one present modality"):
        model.head(feats, torch.tensor([[True, True], [False, False]]))
    with pytest.raises(ValueError, match="shape"):
        model.head(feats, torch.ones(2, 3, dtype=torch.bool))


def test_unseen_classes_are_masked():
    torch.manual_seed(0)
    model = MultiEncoderClassifier(DIMS, 4).train()
    model.adaptation(experience([0, 1]))
    logits = model(inputs())
    assert (logits[:, 2:] == -1000).all() and (logits[:, :2] > -1000).all()


def counting_encode(model):
    """Wrap ``model.encode`` so the test sees how often the encoders run."""
    calls = []
    encode = model.encode

    def counted(x):
        calls.append(x)
        return encode(x)

    model.encode = counted
    return calls


def test_step_features_are_the_forward_features_of_a_multimodal_step_strategy():
    model = multi_encoder("concat")
    calls = counting_encode(model)
    x = inputs()
    strategy = SimpleNamespace(model=model, mb_x=x, mb_present=None)
    MultimodalStep.forward(strategy)                    # the strategy's forward: one encode
    assert len(calls) == 1 and step_features(strategy) is strategy.mb_feats
    assert len(calls) == 1
    stock = SimpleNamespace(model=model, mb_x=x)        # keeps no features: encoded again
    assert torch.equal(step_features(stock)["a"], strategy.mb_feats["a"]) and len(calls) == 2
    model(x)                                            # the model itself keeps no step state
    assert len(calls) == 3 and not hasattr(model, "last_features")


def test_the_step_mask_is_an_argument_not_model_state():
    model = multi_encoder("late")
    x = inputs()
    only_a = torch.tensor([[True, False]]).expand(6, -1)
    strategy = SimpleNamespace(model=model, mb_x=x, mb_present=only_a)
    expected = model.heads["a"](model.encode(x)["a"]) + model.bias
    assert torch.allclose(MultimodalStep.forward(strategy), expected, atol=1e-6)
    assert step_present(strategy) is only_a
    assert torch.allclose(model(x, only_a), expected, atol=1e-6)
    assert not torch.allclose(model(x), expected, atol=1e-3)  # no mask left behind
    assert not hasattr(model, "present_override")


def test_regularisers_own_loss_terms_and_the_metric_only_reads_them():
    cml, mad = CMLPlugin(), MADPlugin()
    metric = LossTermsMetric()
    strategy = SimpleNamespace(loss_terms={"cml": 9.0})
    for values in ({"cml": 1.0, "mad": 4.0}, {"cml": 3.0}):
        cml.before_training_iteration(strategy)
        mad.before_training_iteration(strategy)
        assert strategy.loss_terms == {}             # last iteration's terms are gone
        for name, value in values.items():
            record_loss_term(strategy, name, value)
        metric.after_training_iteration(strategy)
        assert strategy.loss_terms == values         # the metric left them alone
    assert metric.result() == {"cml": 2.0, "mad": 4.0}


def test_modality_dropout_writes_the_mask_on_the_strategy_and_refuses_stock_strategies():
    model = multi_encoder("concat").train()
    plugin = ModalityDropoutPlugin(seed=0)
    strategy = SimpleNamespace(model=model, mb_y=torch.zeros(6, dtype=torch.long),
                               accepts_modality_masks=True)
    plugin.before_training(strategy)
    plugin.before_forward(strategy)
    assert strategy.mb_present.shape == (6, 2) and strategy.mb_present.any(1).all()
    assert not strategy.mb_present.all()                # seed 0 draws a partial mask
    plugin.after_training_iteration(strategy)
    assert strategy.mb_present is None
    with pytest.raises(TypeError, match=r"Naive does not: use strategies.multimodal_step.multimodal\(Naive\)"):
        plugin.before_training(Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), 0.1)))


def test_clap_masks_are_batch_wide_and_canonical():
    model = clap_stub()
    feats = model.encode(inputs())
    with pytest.raises(ValueError, match="batch-wide"):
        model.head(feats, torch.tensor([[True, True]] * 3 + [[True, False]] * 3))
    guidance_only = torch.tensor([[False, True]]).expand(6, -1)
    assert torch.equal(model.canonical(guidance_only), torch.zeros(6, 2, dtype=torch.bool))
    assert torch.allclose(model.head(feats, guidance_only),
                          model.head(feats, torch.zeros(6, 2, dtype=torch.bool)))


def test_clap_guidance_off_equals_the_vga_free_path():
    model = clap_stub()
    x = inputs()
    no_guidance = torch.tensor([[True, False]]).expand(6, -1)
    vga_free = ClapModel(text_stats(n_classes=4, dim=16), logit_scale=10.0, vga=False,
                         variational=False, eval_context="batch")
    vga_free.train()
    vga_free.adaptation(experience([0, 1]))
    vga_free.adaptation(experience([2, 3]))
    vga_free.heads.load_state_dict(model.heads.state_dict())
    vga_free.eval()
    assert torch.allclose(model.head(model.encode(x), no_guidance), F.log_softmax(vga_free(x), -1), atol=1e-5)


def test_clap_null_image_gives_one_prediction_and_vga_makes_batch_dependence():
    model = clap_stub()
    x = inputs()
    null = model.head(model.encode(x), torch.zeros(6, 2, dtype=torch.bool))
    assert torch.allclose(null, null[:1].expand_as(null), atol=1e-6)
    changed = x.clone()
    changed[1:] = torch.randn(5, 16)
    full_a, full_b = model.head(model.encode(x)), model.head(model.encode(changed))
    assert not torch.allclose(full_a[0], full_b[0], atol=1e-4)        # VGA: batch-mates matter
    off = torch.tensor([[True, False]]).expand(6, -1)
    assert torch.allclose(model.head(model.encode(x), off)[0], model.head(model.encode(changed), off)[0], atol=1e-6)


def test_clap_head_is_log_of_mean_sample_probability():
    model = clap_stub(variational=True)
    feats = model.encode(inputs())
    torch.manual_seed(3)
    samples = model.head(feats, mc_samples=True)
    torch.manual_seed(3)
    predictive = model.head(feats)
    assert samples.shape == (3, 6, 4)
    assert torch.allclose(predictive.exp(), samples.softmax(-1).mean(0), atol=1e-6)


def test_clap_removing_the_image_needs_a_null_image():
    model = ClapModel(text_stats(n_classes=2, dim=16), logit_scale=10.0, vga_ffn_dim=16)
    model.train()
    model.adaptation(experience([0, 1]))
    with pytest.raises(RuntimeError, match="set_null_image"):
        model.head(model.encode(inputs()), torch.zeros(6, 2, dtype=torch.bool))


def test_clap_logit_contributions_sum_to_the_logit():
    model = clap_stub()
    feats = model.encode(inputs())
    parts = model.logit_contributions(feats)
    assert set(parts) == {"prior", "guidance", "adapter"}
    assert torch.allclose(sum(parts.values()), model(inputs()), atol=1e-4)


# ---------------------------------------------------------------- subsets
def test_subset_enumerations():
    assert all_nonempty(2) == [(True, True), (True, False), (False, True)]
    assert leave_one_out(2) == [((True, True), (False, True)), ((True, True), (True, False))]
    assert len(all_nested(3)) == 9           # 3 from the full set + 2·3 from the pairs
    for s, t in nested_chain(3, 5, generator=torch.Generator().manual_seed(0)):
        assert (s.sum(1) == t.sum(1) + 1).all() and (t <= s).all()


def test_clap_pairs_are_guidance_and_null_image():
    model = clap_stub()
    assert metric_pairs(model) == [((True, True), (False, False)), ((True, True), (True, False))]
    chain = policy_pairs("nested_chain", 2, 4, allow_empty=True, per_sample=False,
                         canonical=model.canonical)
    for s, t in chain:
        assert (s == s[:1]).all() and (t == t[:1]).all()


# ---------------------------------------------------------------- CML
def probs_logits(rows):
    return torch.log(torch.tensor(rows, dtype=torch.float))


def test_hinge_is_mean_relu_of_confidence_increase():
    sup = probs_logits([[0.6, 0.4], [0.9, 0.1], [0.5, 0.5]])
    sub = probs_logits([[0.8, 0.2], [0.7, 0.3], [0.45, 0.55]])
    hinge = cml_hinge(sup, sub, margin=0.0)
    assert torch.allclose(hinge, torch.tensor([0.2, 0.0, 0.05]), atol=1e-6)
    assert torch.allclose(cml_hinge(sup, sub, margin=0.1), torch.tensor([0.1, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(cml_hinge(sup, sub, confidence_kind="log_msp"),
                          torch.tensor([np.log(0.8 / 0.6), 0.0, np.log(0.55 / 0.5)]).float(), atol=1e-6)


def test_hinge_and_gradient_are_zero_when_confidence_is_monotone():
    sup = probs_logits([[0.9, 0.1], [0.2, 0.8]]).requires_grad_()
    sub = probs_logits([[0.7, 0.3], [0.4, 0.6]]).requires_grad_()
    term = cml_hinge(sup, sub).mean()
    term.backward()
    assert term.item() == 0 and sup.grad.abs().sum() == 0 and sub.grad.abs().sum() == 0


def test_gate_truth_tables():
    # samples: (superset right, subset right) = (R,R), (R,W), (W,R), (W,W); all violate by 0.1
    targets = torch.tensor([0, 0, 0, 0])
    sup = probs_logits([[0.6, 0.4], [0.6, 0.4], [0.4, 0.6], [0.4, 0.6]])
    sub = probs_logits([[0.7, 0.3], [0.3, 0.7], [0.7, 0.3], [0.3, 0.7]])
    expected = {"none": [1, 1, 1, 1], "superset_correct": [1, 1, 0, 0],
                "miwae": [1, 1, 0, 1], "cpm": [1, 1, 0, 1]}
    for gate, active in expected.items():
        hinge = cml_hinge(sup, sub, targets, gate=gate)
        assert torch.allclose(hinge, 0.1 * torch.tensor(active, dtype=torch.float), atol=1e-6), gate


def test_miwae_gate_gives_no_gradient_to_the_superset_when_both_are_wrong():
    targets = torch.tensor([0])
    sup = probs_logits([[0.4, 0.6]]).requires_grad_()
    sub = probs_logits([[0.3, 0.7]]).requires_grad_()
    cml_hinge(sup, sub, targets, gate="miwae").sum().backward()
    assert sup.grad.abs().sum() == 0 and sub.grad.abs().sum() > 0


def test_confidence_of_monte_carlo_logits_is_max_of_mean_probability():
    samples = torch.randn(5, 3, 4)
    expected = samples.softmax(-1).mean(0).max(-1).values
    assert torch.allclose(confidence(samples), expected, atol=1e-6)


def test_vrr_on_hand_made_confidences():
    acc = ReliabilityAccumulator(("a", "b"), leave_one_out(2))
    full = probs_logits([[0.6, 0.4], [0.9, 0.1]])
    acc.update({(True, True): full,
                (False, True): probs_logits([[0.7, 0.3], [0.8, 0.2]]),     # without a: 1 of 2 rises
                (True, False): probs_logits([[0.5, 0.5], [0.6, 0.4]])},    # without b: none
               torch.tensor([0, 1]))
    result = acc.result()
    assert result["VRR"] == pytest.approx(0.25)
    assert result["VRR/without_a"] == pytest.approx(0.5) and result["VRR/without_b"] == 0.0
    assert result["MeanViolation"] == pytest.approx(0.1)
    assert result["SubsetAcc/a+b"] == 0.5 and result["SubsetAcc/worst"] == 0.5


# ---------------------------------------------------------------- MAR
def test_mar_term_is_the_masked_mean_and_zero_without_weak_samples():
    logits = torch.randn(4, 3)
    targets = torch.tensor([0, 1, 2, 0])
    ce = F.cross_entropy(logits, targets, reduction="none")
    selected = torch.tensor([True, False, True, False])
    assert torch.allclose(masked_mean_ce(logits, targets, selected), (ce[0] + ce[2]) / 4)
    assert masked_mean_ce(logits, targets, torch.zeros(4, dtype=torch.bool)) == 0


def test_mar_broadcast_bug_regression():
    """Doubling the weak samples (each with the same CE) doubles the term, not more: the
    reference's (B,) × (B,1,1,1) broadcast gave mean CE × number of weak samples."""
    logits = torch.tensor([[2.0, 0.0]] * 8)
    targets = torch.zeros(8, dtype=torch.long)
    ce = F.cross_entropy(logits[:1], targets[:1])
    two = masked_mean_ce(logits, targets, torch.tensor([1, 1, 0, 0, 0, 0, 0, 0], dtype=torch.bool))
    four = masked_mean_ce(logits, targets, torch.tensor([1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool))
    assert torch.allclose(two, 2 * ce / 8) and torch.allclose(four, 2 * two)
    per_sample = F.cross_entropy(logits, targets, reduction="none")
    buggy = (per_sample * torch.ones(8, 1, 1, 1)).mean()   # what the reference computed (all weak)
    assert not torch.allclose(buggy * 8, masked_mean_ce(logits, targets, torch.ones(8, dtype=torch.bool)))


def test_mining_scores_pick_the_weakest_candidate_and_its_subsets():
    full = {"accuracy": np.float64(0.9), "nll": np.float64(0.3), "hist": np.array([5.0, 5.0])}
    weak_b = {"accuracy": np.float64(0.5), "nll": np.float64(1.2), "hist": np.array([9.0, 1.0])}
    weak_a = {"accuracy": np.float64(0.85), "nll": np.float64(0.4), "hist": np.array([5.0, 5.0])}
    scores = {s: discrepancy("accuracy_gap", full, st) for s, st in (((False, True), weak_b), ((True, False), weak_a))}
    assert scores[(False, True)] == pytest.approx(0.4)
    assert weak_set(scores) == {(False, True)}
    three = {(True, True, False): 0.5, (True, False, False): 0.1}
    assert weak_set(three) == {(True, True, False), (True, False, False), (False, True, False)}
    assert weak_set(three, expand_to_subsets=False) == {(True, True, False)}
    assert discrepancy("label_hist_kl", full, weak_b) > discrepancy("label_hist_kl", full, weak_a) == pytest.approx(0)
    assert discrepancy("nll_gap", full, weak_b) == pytest.approx(0.9)


def test_mar_aux_head_does_not_change_evaluation_outputs():
    model = multi_encoder("concat")
    x = inputs()
    before = model(x)
    plugin = MARPlugin(aux_head=torch.nn.Linear(32, 4))
    plugin.weak = {(False, True)}
    assert torch.equal(model(x), before)


# ---------------------------------------------------------------- MAD
def test_mad_zero_for_identical_scale_invariant_and_weights():
    s = torch.randn(6, 5)
    t_logits = torch.randn(6, 4)
    assert mad_loss(s, s, t_logits) == 0
    t = torch.randn(6, 5)
    assert torch.allclose(mad_loss(3.0 * s, t, t_logits), mad_loss(s, t, t_logits), atol=1e-6)
    w = entropy_weights(torch.tensor([[5.0, 0.0], [1.0, 0.0], [0.0, 0.0]]))
    assert torch.isclose(w.sum(), torch.tensor(1.0)) and (w[0] < w[1] < w[2])


def test_mad_is_nan_free_on_saturated_teachers():
    s, t = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3)
    loss = mad_loss(s, t, torch.tensor([[1e4, -1e4]] * 4))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_mad_row_and_col_weighting_match_hand_computation():
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    logits = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    gs = F.normalize(s @ s.T, dim=1)
    gt = torch.eye(2)
    err = (gs - gt) ** 2
    p = logits.softmax(-1)
    h = -(p * p.log()).sum(-1)
    w = h / h.sum()
    assert torch.allclose(mad_loss(s, t, logits, weight_axis="row"), (err.sum(1) * w).sum())
    assert torch.allclose(mad_loss(s, t, logits, weight_axis="col"), (err.sum(0) * w).sum())


# ---------------------------------------------------------------- attribution
def test_grad_x_input_completeness_for_linear_late_fusion():
    model = multi_encoder("late")
    feats = model.encode(inputs())
    gxi = grad_x_input(model, feats)
    logits = model.head(feats)
    index = logits.argmax(1)
    for m in ("a", "b"):
        contribution = model.heads[m](feats[m]).gather(1, index[:, None])[:, 0]
        assert torch.allclose(gxi[m].sum(1), contribution, atol=1e-5)


def test_shares_sum_to_one_and_term_zero_at_target():
    model = multi_encoder("late")
    names, shares = attribution_shares(model, model.encode(inputs()))
    assert names == ("a", "b") and torch.allclose(shares.sum(1), torch.ones(6))
    target = dict(zip(names, shares[0].tolist()))
    assert (shares[0] - target_ratio(names, target)).abs().sum() < 1e-6
    assert torch.equal(shares_from_scores(torch.zeros(1, 2)), torch.tensor([[0.5, 0.5]]))


def test_bilinear_logit_shares_are_exactly_half_and_refused():
    class Bilinear(torch.nn.Module):
        modality_names, per_sample_masks = ("image", "text"), True

        def encode(self, x):
            return x

        def head(self, feats, present=None, mc_samples=False):
            return 10.0 * (feats["image"] * feats["text"]).sum(-1, keepdim=True).expand(-1, 3)

    feats = {"image": torch.randn(5, 4), "text": torch.randn(5, 4)}
    gxi = grad_x_input(Bilinear(), feats)
    assert torch.allclose(gxi["image"], gxi["text"])
    names, shares = attribution_shares(Bilinear(), feats)
    assert torch.allclose(shares, torch.full((5, 2), 0.5))
    flagged = Bilinear()
    flagged.bilinear_logit = True
    with pytest.raises(ValueError, match="bilinear"):
        attribution_shares(flagged, feats)


def test_head_only_scope_gives_encoders_no_gradient():
    model = multi_encoder("late").train()
    feats = model.encode(inputs())
    names, shares = attribution_shares(model, feats, create_graph=True)
    (shares[:, 0] - 0.5).abs().mean().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.encoders.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads.parameters())


def test_clap_attribution_uses_the_additive_decomposition():
    model = clap_stub()
    names, shares = attribution_shares(model, model.encode(inputs()))
    assert names == ("prior", "guidance", "adapter") and torch.allclose(shares.sum(1), torch.ones(6))


def test_class_prior_probe_reports_newest_task_mass():
    probe = class_prior_probe(clap_stub())
    assert 0 <= probe["PriorNewestTaskMass"] <= 1 and 0 < probe["PriorEntropy"] <= np.log(4) + 1e-6


def test_dropout_policies_draw_valid_masks():
    model = clap_stub()
    masks = ModalityDropoutPlugin(seed=0).sample(model, 300)
    kinds = {tuple(r.tolist()) for r in masks}
    assert kinds == {(True, True), (True, False), (False, False)}      # canonical CLAP subsets
    late = multi_encoder("late")
    bern = ModalityDropoutPlugin("bernoulli", p={"b": 0.5}, seed=0).sample(late, 2000)
    assert bern[:, 0].all() and abs(bern[:, 1].float().mean().item() - 0.5) < 0.05
    both = ModalityDropoutPlugin("bernoulli", p=0.9, seed=0).sample(late, 500)
    assert both.any(1).all()                                         # empty rows re-drawn
    with pytest.raises(ValueError, match="every modality"):
        ModalityDropoutPlugin("bernoulli", p=1.0).sample(late, 4)
    with pytest.raises(ValueError, match="p names"):
        ModalityDropoutPlugin("bernoulli", p={"c": 0.5}).sample(late, 4)
