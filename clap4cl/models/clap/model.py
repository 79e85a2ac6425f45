"""The CLAP4CLIP model: visual-guided attention and probabilistic per-task heads on frozen CLIP.

For the classes seen so far (see docs/clap4clip.md),

    z_c^(m) = μ_c + σ_c ⊙ ε_c^(m)                 ε shared by the whole batch
    s_{b,c}^(m) = τ·⟨x̂_b, h_c + z_c^(m)⟩          logits, concatenated over tasks

with h, μ, σ from :mod:`clap4cl.models.clap.layers`. The logits are computed without
materialising the (M, B, C, D) tensor of class weights.

One file, longer than the others: ``ClapModel`` is one class whose growth, sampling,
multimodal interface and checkpoint state share its head bookkeeping; the layers and
losses it uses live beside it.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from avalanche.models.dynamic_modules import DynamicModule

from clap4cl import distributed
from clap4cl.encoders.text_features import ClassTextFeatures
from clap4cl.models.choices import LANGUAGE_INIT_CLASSES
from clap4cl.models.clap.layers import CONTEXTS, GaussianTaskHeads, VisualGuidedAttention
from clap4cl.models.clap.losses import language_init
from clap4cl.models.frozen_encoder import FrozenImageEncoderMixin
from clap4cl.models.masking import (MaskedLogitsMixin, learns_classes_from, new_classes,
                                    pad_unseen, require_trained)
from clap4cl.models.multimodal import MultimodalModule


# Image-class pairs per chunk of per-image evaluation (see ClapModel._sample_per_image).
EVAL_CHUNK_PAIRS = 2048


def _normal(shape, device, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Standard normal draws on ``device``, from ``generator`` (on its own device) if given."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def _for_batch(out: "ClapOutput", batch: int) -> "ClapOutput":
    """``out`` of class-level μ, σ ((C, D) or one image's (1, C, D)) and, for one image,
    logits (M, 1, C), shown for ``batch`` images that all give the same result."""
    expand = lambda x: None if x is None else x.expand(batch, -1, -1)  # noqa: E731
    return ClapOutput(out.logits.expand(-1, batch, -1).contiguous(), expand(out.mu),
                      expand(out.sigma), out.eps_mean)


@dataclass
class ClapOutput:
    """Everything one CLAP forward pass produces.

    Attributes:
        logits: (M, B, C) per-sample logits over the seen classes.
        mu, sigma: (C, D) with batch context, (B, C, D) with per-image context; sigma is
            None for deterministic heads.
        eps_mean: (C, D) mean over the M draws of ε (so z̄ = μ + σ ⊙ eps_mean), or None.
    """

    logits: torch.Tensor
    mu: torch.Tensor
    sigma: Optional[torch.Tensor]
    eps_mean: Optional[torch.Tensor]

    @property
    def mean_logits(self) -> torch.Tensor:
        return self.logits.mean(0)

    @property
    def z_mean(self) -> torch.Tensor:
        """Sample mean z̄ of the heads' outputs (μ for deterministic heads)."""
        return self.mu if self.sigma is None else self.mu + self.sigma * self.eps_mean


class ClapModel(MaskedLogitsMixin, FrozenImageEncoderMixin, MultimodalModule, DynamicModule):
    """CLAP4CLIP as an Avalanche dynamic module over frozen CLIP features.

    It grows one probabilistic head per training experience (language-initialised from
    the text statistics of the stream's classes) and scores all classes seen so far.
    ``forward`` returns the mean over M Monte-Carlo samples of the logits over *every*
    class of ``text``, (B, C_all), the classes not trained on yet masked to
    ``clap4cl.models.masking.UNSEEN_LOGIT``, so any Avalanche strategy can train it as a
    plain classifier and evaluate it on the whole test stream (future experiences score
    accuracy 0 with a finite loss). ``forward_samples`` returns all M samples over the
    seen classes, (M, B, C_seen), and the head statistics for CLAP's own loss.

    Args:
        text: text statistics of every class of the stream, in label order.
        logit_scale: CLIP's temperature τ (exp of ``logit_scale``).
        vga: use the visual-guided attention (else h = t).
        vga_heads, vga_ffn_dim, vga_dropout: its decoder layer's shape.
        mc_samples: M.
        variational: False gives deterministic heads (z = μ): CLAP without VI.
        init_from_language: initialise new heads' weights to ĒᵀĒ/D and VᵀV/D.
        language_init_classes: ``all`` seen classes (reference) or the ``new`` ones.
        train_context, eval_context: VGA context in train and eval mode (``batch`` or
            ``per_image``). In data-parallel training under torchrun the ``batch``
            context is the global batch: the image features of every rank's share.
        image_encoder: optional frozen ``FrozenCLIP`` for image inputs (B, 3, H, W), never
            in ``state_dict`` or ``parameters``, moved by ``.to(device)`` and shared (not
            copied) by ``copy.deepcopy`` (see :mod:`clap4cl.models.frozen_encoder`).
        freeze_old_heads: when a head is added, freeze the older ones (only the newest
            head and the VGA train). False (the default) leaves every head trainable, so a
            stock Avalanche strategy (Naive, LwF, EWC, GDumb, replay) trains, distils or
            protects all of them. The ``strategies.CLAP`` strategy does not need it: it
            freezes and unfreezes heads itself, per phase (its training rule).

    As a :class:`clap4cl.models.multimodal.MultimodalModule` its removable components are the
    ``image`` (replaced by the null image of :meth:`set_null_image`, e.g. the frozen
    embedding of a grey image) and the visual ``guidance`` (off: h = t, the VGA-free
    path; it needs the image). Masks are batch-wide because the VGA attends over the
    batch; an empty mask is the text prior alone. ``head`` returns the log of the mean
    of the M sample probabilities (the predictive distribution), while ``forward`` keeps
    the reference's mean of logits.
    """

    modality_names = ("image", "guidance")
    per_sample_masks = False
    requires = {"guidance": frozenset({"image"})}
    allow_empty = True
    null_mode = {"image": "null_input", "guidance": "zeros"}
    bilinear_logit = True

    def __init__(self, text: ClassTextFeatures, logit_scale: float, *, vga: bool = True,
                 vga_heads: int = 1, vga_ffn_dim: int = 2048, vga_dropout: float = 0.1,
                 mc_samples: int = 20, variational: bool = True, init_from_language: bool = True,
                 language_init_classes: str = "all", train_context: str = "batch",
                 eval_context: str = "per_image", image_encoder=None,
                 freeze_old_heads: bool = False):
        super().__init__()
        for name, value in (("train_context", train_context), ("eval_context", eval_context)):
            if value not in CONTEXTS:
                raise ValueError(f"{name} must be one of {CONTEXTS}, got {value!r}")
        if language_init_classes not in LANGUAGE_INIT_CLASSES:
            raise ValueError(f"language_init_classes must be one of {LANGUAGE_INIT_CLASSES}, "
                             f"got {language_init_classes!r}")
        if mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        if text is None:
            raise TypeError("ClapModel needs class text features, got None: build the stream with "
                            "scenarios.class_incremental(..., backbone=clip) and pass bench.text_features, "
                            "or clap4cl.class_text_features(clip, bench.class_names, bench.templates)")
        dim = text.dim
        self.register_buffer("class_features", text.normalized.float().clone())
        self.register_buffer("text_mean", text.mean.float().clone())
        self.register_buffer("text_variance", text.variance.float().clone())
        self.register_buffer("null_image", torch.zeros(dim))
        self.logit_scale = float(logit_scale)
        self.vga = VisualGuidedAttention(dim, vga_heads, vga_ffn_dim, vga_dropout) if vga else None
        self.heads = GaussianTaskHeads(dim, variational)
        self.mc_samples = int(mc_samples)
        self.init_from_language = init_from_language
        self.language_init_classes = language_init_classes
        self.train_context = train_context
        self.eval_context = eval_context
        self.freeze_old_heads = bool(freeze_old_heads)
        self._per_image_observers: List[Callable] = []
        self.set_image_encoder(image_encoder)

    # ------------------------------------------------------------------ structure
    @property
    def dim(self) -> int:
        return self.class_features.shape[1]

    @property
    def variational(self) -> bool:
        return self.heads.variational

    @property
    def task_sizes(self) -> List[int]:
        return list(self.heads.sizes)

    @property
    def n_seen_classes(self) -> int:
        return sum(self.heads.sizes)

    def task_of_class(self) -> torch.Tensor:
        sizes = torch.tensor(self.heads.sizes, device=self.class_features.device)
        return torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), sizes)

    def adaptation(self, experience) -> None:
        """Add a head for the new classes of a training experience."""
        if not learns_classes_from(self, experience):
            return
        new = new_classes(experience, self.n_seen_classes)
        if new:
            self.add_task(new)

    def add_task(self, classes: Sequence[int]) -> None:
        """Append a head for ``classes`` (the next contiguous labels); older heads are
        frozen only with ``freeze_old_heads``."""
        start = self.n_seen_classes
        if list(classes) != list(range(start, start + len(classes))):
            raise ValueError(f"new classes must be the next contiguous labels {start}.., got "
                             f"{list(classes)[:10]}: build the stream with scenarios.class_incremental")
        end = start + len(classes)
        if end > self.class_features.shape[0]:
            raise ValueError(f"label {end - 1} has no text features ({self.class_features.shape[0]} classes)")
        mu_init = sigma_init = None
        if self.init_from_language:
            first = 0 if self.language_init_classes == "all" else start
            mu_init, sigma_init = language_init(self.text_mean[first:end], self.text_variance[first:end])
        self.heads.add_task(len(classes), mu_init, sigma_init)
        self._set_default_trainable()

    def _set_default_trainable(self) -> None:
        """The newest head only (``freeze_old_heads``) or every head trains."""
        n_tasks = self.heads.n_tasks
        self.heads.set_trainable([n_tasks - 1] if self.freeze_old_heads else range(n_tasks))

    # ------------------------------------------------------------------ forward
    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised fp32 image features of images (B, 3, H, W) or features (B, D)."""
        return F.normalize(self.image_features(x).float(), dim=-1)

    def encode(self, x: torch.Tensor):
        return {"image": self.encode_images(x)}

    def set_null_image(self, embedding: torch.Tensor) -> None:
        """The image embedding that stands for "no image" (normalised; e.g. a grey image's)."""
        self.null_image.copy_(F.normalize(embedding.detach().float().reshape(-1), dim=0))

    def current_context(self) -> str:
        return self.train_context if self.training else self.eval_context

    def refined_text(self, images: torch.Tensor, context: Optional[str] = None,
                     guidance: bool = True) -> torch.Tensor:
        """h = t + VGA(t, x̂): (C, D) for batch context, (B, C, D) per image; h = t
        without ``guidance``."""
        context = context or self.current_context()
        t = self.class_features[: self.n_seen_classes]
        if self.vga is None or not guidance:
            return t if context == "batch" else t.expand(images.shape[0], -1, -1)
        if context == "batch" and self.training:
            # Data-parallel training (torchrun): the context is the global batch, as in
            # one process; the frozen features of the other ranks carry no gradient.
            images = distributed.cat_all_ranks(images)
        return t + self.vga(t, images, self.task_of_class(), context)

    def forward_samples(self, x: torch.Tensor, n_samples: Optional[int] = None,
                        context: Optional[str] = None, present: Optional[torch.Tensor] = None,
                        generator: Optional[torch.Generator] = None) -> ClapOutput:
        """All M sampled logits (M, B, C) plus μ, σ and the mean of ε.

        ``present`` is a batch-wide modality mask (None: every component); ``n_samples``
        is M (None: ``mc_samples``; 0: no sampling, the closed-form mean E[s] as one
        row); ``generator`` is the source of ε (None: the global RNG)."""
        return self.sample(self.encode(x)["image"], present, n_samples, context, generator)

    def sample(self, images: torch.Tensor, present: Optional[torch.Tensor] = None,
               n_samples: Optional[int] = None, context: Optional[str] = None,
               generator: Optional[torch.Generator] = None) -> ClapOutput:
        """:meth:`forward_samples` on encoded images, with the components of ``present``."""
        require_trained(self.n_seen_classes)
        images, guidance = self._apply_mask(images, present)
        context = context or self.current_context()
        m = self.mc_samples if n_samples is None else int(n_samples)
        if context == "per_image" and not (self.training or torch.is_grad_enabled()):
            return self._sample_per_image(images, guidance, m, generator)
        h = self.refined_text(images, context, guidance)
        mu, sigma = self.heads(h)
        return self._output(images, h, mu, sigma, self.draw_eps(generator, m))

    def _output(self, images, h, mu, sigma, eps, notify: bool = False) -> ClapOutput:
        """Logits (M, B, C) from h, μ, σ and ε; ``notify``: a chunk of a guided per-image
        evaluation, shown to the observers of :meth:`observing_per_image` first."""
        base = self._scores(images, h + mu)                                 # (B, C)
        if notify:
            for observer in self._per_image_observers:
                observer(images, base, sigma)
        if eps is None:                                  # E[s] = τ⟨x̂, h + μ⟩: ε has mean 0
            return ClapOutput(base[None], mu, None, None)
        return ClapOutput(base[None] + self.noise_scores(images, sigma, eps), mu, sigma, eps.mean(0))

    def _sample_per_image(self, images, guidance, m, generator) -> ClapOutput:
        """Per-image evaluation without autograd (nothing random but ε, drawn once), done
        once where the images do not matter: without guidance h = t for every image, so
        the heads run once on (C, D); when every row is the same tensor (the null image
        of a removed image is an expanded view) one row is computed and repeated.
        Otherwise a few images at a time: each image is its own context, so chunks give
        the same numbers while the (images × classes, VGA width) intermediates stay small
        enough for the CPU caches (docs/benchmarks.md, "The full protocol")."""
        n_classes, batch = self.n_seen_classes, images.shape[0]
        t = self.class_features[:n_classes]
        eps = self.draw_eps(generator, m)                                   # (M, C, D)
        if self.vga is None or not guidance:
            out = self._output(images, t, *self.heads(t), eps)
            return _for_batch(out, batch)
        attend = self.vga.per_image(t, self.task_of_class())
        if batch > 1 and images.stride(0) == 0:                            # identical rows
            return _for_batch(self._output(images[:1], *self._refined_heads(t, attend, images[:1]),
                                          eps), batch)
        outputs = [self._output(chunk, *self._refined_heads(t, attend, chunk), eps, notify=True)
                   for chunk in images.split(max(1, EVAL_CHUNK_PAIRS // n_classes))]
        if len(outputs) == 1:
            return outputs[0]
        sigma = None if eps is None else torch.cat([o.sigma for o in outputs])
        return ClapOutput(torch.cat([o.logits for o in outputs], 1),
                          torch.cat([o.mu for o in outputs]), sigma, outputs[0].eps_mean)

    @contextlib.contextmanager
    def observing_per_image(self, observer: Callable[[torch.Tensor, torch.Tensor,
                                                      Optional[torch.Tensor]], None]):
        """Within the block, every chunk of images that a guided per-image evaluation
        computes is passed to ``observer(images (B, D), base (B, C), sigma (B, C, D) or
        None)``, with base = τ⟨x̂, h + μ⟩: enough to form the chunk's sample logits
        base + :meth:`noise_scores` for any other ε, without the VGA and heads again
        (the experiment runner's reliability report shares the evaluation pass this way)."""
        self._per_image_observers.append(observer)
        try:
            yield
        finally:
            self._per_image_observers.remove(observer)

    def draw_eps(self, generator: Optional[torch.Generator] = None,
                 n_samples: Optional[int] = None) -> Optional[torch.Tensor]:
        """The ε (M, C_seen, D) a sampling pass draws from ``generator`` (None: the global
        RNG) for M = ``n_samples`` (None: ``mc_samples``); None when nothing is drawn
        (deterministic heads, or M = 0)."""
        m = self.mc_samples if n_samples is None else int(n_samples)
        if not (self.variational and m):
            return None
        return _normal((m, self.n_seen_classes, self.dim), self.class_features.device, generator)

    @staticmethod
    def log_predictive(logits: torch.Tensor) -> torch.Tensor:
        """log of the mean over the M samples of softmax, (B, C), of logits (M, B, C)."""
        return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])

    def _refined_heads(self, t, attend, images):
        """(h, μ, σ) per image of ``images`` with h = t + VGA."""
        h = t + attend(images)
        return (h, *self.heads(h))

    def head(self, feats, present: Optional[torch.Tensor] = None, *,
             mc_samples: bool = False, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """log of the mean over M samples of softmax (B, C_seen), or the raw (M, B, C_seen)
        logits, over the seen classes (the toolkit's modality metrics and plugins use it)."""
        logits = self.sample(feats["image"], present, generator=generator).logits
        return logits if mc_samples else self.log_predictive(logits)

    def embed(self, feats, present: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The mean-over-samples logits (B, C): the image side is frozen, so only the
        text side's output can serve as CLAP's representation."""
        return self.sample(feats["image"], present).mean_logits

    def logit_contributions(self, feats, present: Optional[torch.Tensor] = None):
        """The logit split additively by where the class weight comes from, (B, C_seen) each:
        ``prior`` τ⟨x̂, t_c⟩ (zero-shot text), ``guidance`` τ⟨x̂, VGA_c⟩ and ``adapter``
        τ⟨x̂, z̄_c⟩ (the task head's sample mean). They sum to the mean logit."""
        require_trained(self.n_seen_classes)
        images, guidance = self._apply_mask(feats["image"], present)
        context = self.current_context()
        t = self.class_features[: self.n_seen_classes]
        h = self.refined_text(images, context, guidance)
        mu, sigma = self.heads(h)
        z = mu
        if sigma is not None:
            z = mu + sigma * torch.randn(mu.shape[-2:], device=mu.device) / math.sqrt(self.mc_samples)
        prior = self._scores(images, t)
        return {"prior": prior, "guidance": self._scores(images, h) - prior,
                "adapter": self._scores(images, z)}

    def _apply_mask(self, images, present):
        """(images or the null image, guidance on?) for a batch-wide mask."""
        if present is None:
            return images, True
        present = self.check_present(present.to(images.device), images.shape[0])
        image_on, guidance_on = bool(present[0, 0]), bool(present[0, 1])
        if not image_on:
            if not self.null_image.any():
                raise RuntimeError("removing the image needs a null image: call "
                                   "model.set_null_image(embedding of a grey image)")
            images = self.null_image.expand_as(images)
        return images, guidance_on

    def forward(self, x: torch.Tensor, present: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Mean over M samples of the logits over every class, (B, C_all); classes not
        trained on yet are ``UNSEEN_LOGIT``.

        The mean is linear in ε, so it is computed from one draw ε̄ ~ N(0, I/M): the
        same distribution as averaging M sampled logits. ``generator``: the source of
        ε̄ (None: the global RNG).
        """
        if self.n_seen_classes == 0:
            return self.untrained_logits(x.shape[0])
        return pad_unseen(self.seen_forward(x, present, generator), self.n_classes)

    def seen_forward(self, x: torch.Tensor, present: Optional[torch.Tensor] = None,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """:meth:`forward` over the seen classes only, (B, C_seen)."""
        require_trained(self.n_seen_classes)
        images, guidance = self._apply_mask(self.encode(x)["image"], present)
        h = self.refined_text(images, guidance=guidance)
        mu, sigma = self.heads(h)
        logits = self._scores(images, h + mu)
        if sigma is not None:
            eps_mean = _normal(mu.shape[-2:], mu.device, generator) / math.sqrt(self.mc_samples)
            logits = logits + self.noise_scores(images, sigma, eps_mean[None])[0]
        return logits

    def _scores(self, images, weights):
        """τ⟨x̂_b, w_c⟩ for class weights (C, D) or per-image (B, C, D)."""
        if weights.dim() == 2:
            return self.logit_scale * images @ weights.T
        return self.logit_scale * torch.einsum("bd,bcd->bc", images, weights)

    def noise_scores(self, images: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """τ⟨x̂_b, σ_c ⊙ ε_c^(m)⟩ (M, B, C) of images (B, D), σ (C, D) or per image
        (B, C, D) and ε (M, C, D), without forming (M, B, C, D)."""
        if sigma.dim() == 2:
            return self.logit_scale * torch.einsum("bd,mcd->mbc", images, sigma[None] * eps)
        return self.logit_scale * torch.einsum("bcd,mcd->mbc", images[:, None, :] * sigma, eps)

    # ------------------------------------------------------------------ state
    def get_extra_state(self):
        return {"task_sizes": self.task_sizes}

    def set_extra_state(self, state) -> None:
        if list(state["task_sizes"]) != self.task_sizes:
            raise ValueError(f"checkpoint has tasks {state['task_sizes']}, model {self.task_sizes}")

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Grow the heads to the checkpoint's tasks, then load it."""
        sizes = state_dict.get("_extra_state", {}).get("task_sizes", [])
        for size in sizes[self.heads.n_tasks:]:
            self.heads.add_task(size)
        if self.heads.n_tasks:
            self._set_default_trainable()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
