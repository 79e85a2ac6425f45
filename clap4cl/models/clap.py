"""The CLAP4CLIP model: visual-guided attention and probabilistic per-task heads on frozen CLIP.

Method and reference behaviours: docs/clap4clip.md (R1-R10). For the classes seen so far,

    h_c = t_c + VGA(t, x̂)_c                      refined class text feature
    μ_c = W_μ[k] h_c + b_μ[k],  σ_c = 0.999·softplus(W_σ[k] h_c + b_σ[k]) + 0.001
    z_c^(m) = μ_c + σ_c ⊙ ε_c^(m)                 ε shared by the whole batch
    s_{b,c}^(m) = τ·⟨x̂_b, h_c + z_c^(m)⟩          logits, concatenated over tasks

where k is the task (experience) that introduced class c. The heads of all tasks are
evaluated with one batched matrix product; the logits are computed without
materialising the (M, B, C, D) tensor of class weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from avalanche.models.dynamic_modules import DynamicModule
from torch import nn

from clap4cl import distributed
from clap4cl.models.multimodal import MultimodalModule
from clap4cl.encoders.text_features import ClassTextFeatures

CONTEXTS = ("batch", "per_image")
LANGUAGE_INIT_CLASSES = ("all", "new")
SIGMA_SCALE = 0.999
SIGMA_FLOOR = 0.001


def task_block_mask(task_of_class: torch.Tensor) -> torch.Tensor:
    """(C, C) boolean self-attention mask, True where query c may *not* attend to c'."""
    return task_of_class[:, None] != task_of_class[None, :]


class VisualGuidedAttention(nn.Module):
    """One post-LN transformer decoder layer: class queries attend to image features.

    Queries are the seen classes' text features (self-attention masked per task),
    memory is the context of image features. ``batch`` context = the whole mini-batch
    as one sequence (the reference; output (C, D) shared by the batch); ``per_image`` =
    each image its own context (output (B, C, D)). With a single key the
    cross-attention weight is 1, so its output W_o(W_v x̂ + b_v) + b_o does not depend
    on the query and no per-(image, class) attention pass is needed.
    """

    def __init__(self, dim: int, heads: int = 1, ffn_dim: int = 2048, dropout: float = 0.1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"VGA width {dim} is not divisible by {heads} heads")
        self.layer = nn.TransformerDecoderLayer(dim, heads, ffn_dim, dropout, activation="gelu",
                                                batch_first=True, norm_first=False)

    def forward(self, queries: torch.Tensor, images: torch.Tensor, task_of_class: torch.Tensor,
                context: str = "batch") -> torch.Tensor:
        mask = task_block_mask(task_of_class)
        if context == "batch":
            return self.layer(queries[None], images[None], tgt_mask=mask)[0]
        if context == "per_image":
            return self._per_image(queries, images, mask)
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")

    def _per_image(self, queries, images, mask):
        layer = self.layer
        attended = layer.self_attn(queries, queries, queries, attn_mask=mask, need_weights=False)[0]
        x = layer.norm1(queries + layer.dropout1(attended))                   # (C, D)
        cross = self._single_key_cross_attention(images, x.shape[0])          # (B, C|1, D)
        y = layer.norm2(x[None] + layer.dropout2(cross))                      # (B, C, D)
        if cross.shape[1] == 1 and not (self.training and layer.dropout2.p > 0):
            hidden = self._factored_linear1(x, cross[:, 0])
        else:
            hidden = layer.linear1(y)
        ffn = layer.linear2(layer.dropout(layer.activation(hidden)))
        return layer.norm3(y + layer.dropout3(ffn))

    def _factored_linear1(self, x, k):
        """linear1(norm2(x_c + k_b)) for every (image b, class c), (B, C, F), without the
        B·C·D·F product: LayerNorm of a sum is γ ⊙ r_bc (x̃_c + k̃_b) + β with centred
        parts x̃, k̃ and one scalar r_bc = 1/std per pair, so the map is
        r_bc (P_c + Q_b) + e with P = x̃ (W₁ diag γ)ᵀ, Q = k̃ (W₁ diag γ)ᵀ, e = W₁β + b₁."""
        norm, linear = self.layer.norm2, self.layer.linear1
        x_c = x - x.mean(-1, keepdim=True)                                    # (C, D)
        k_c = k - k.mean(-1, keepdim=True)                                    # (B, D)
        variance = ((x_c * x_c).sum(-1)[None, :] + (k_c * k_c).sum(-1)[:, None]
                    + 2 * k_c @ x_c.T) / x.shape[-1]                           # (B, C)
        scale = torch.rsqrt(variance.clamp_min(0) + norm.eps)
        weight = linear.weight * norm.weight                                  # (F, D)
        offset = linear.weight @ norm.bias + linear.bias                      # (F,)
        parts = (x_c @ weight.T)[None] + (k_c @ weight.T)[:, None]              # (B, C, F)
        return torch.addcmul(offset, scale[..., None], parts)   # one pass over (B, C, F)

    def _single_key_cross_attention(self, images, n_queries):
        attn = self.layer.multihead_attn
        dim = images.shape[-1]
        heads = attn.num_heads
        values = F.linear(images, attn.in_proj_weight[2 * dim:], attn.in_proj_bias[2 * dim:])
        if not (self.training and attn.dropout > 0):
            return attn.out_proj(values)[:, None, :]
        # Attention dropout on a weight of 1: per (image, query, head) the head's value is
        # kept (scaled by 1/(1-p)) or dropped; out_proj is linear, so mix per-head outputs.
        per_head = values.view(-1, heads, dim // heads)                        # (B, H, D/H)
        w_out = attn.out_proj.weight.view(dim, heads, dim // heads)
        head_outputs = torch.einsum("bhk,dhk->bhd", per_head, w_out)          # (B, H, D)
        keep = torch.full((images.shape[0], n_queries, heads), 1 - attn.dropout, device=images.device)
        keep = torch.bernoulli(keep) / (1 - attn.dropout)
        return torch.einsum("bch,bhd->bcd", keep, head_outputs) + attn.out_proj.bias


class GaussianTaskHeads(nn.Module):
    """One (mean, std) pair of Linear(D, D) maps per task, evaluated as one batched product.

    Task k owns the contiguous block of classes ``[offsets[k], offsets[k] + sizes[k])``.
    Tasks of unequal size are padded to the largest one. Each task's parameters are
    separate tensors so older tasks can be frozen with ``requires_grad``; they are
    stacked for the computation.
    """

    def __init__(self, dim: int, variational: bool = True):
        super().__init__()
        self.dim = dim
        self.variational = variational
        self.mu_weight = nn.ParameterList()
        self.mu_bias = nn.ParameterList()
        self.sigma_weight = nn.ParameterList()
        self.sigma_bias = nn.ParameterList()
        self.sizes: List[int] = []
        self._layout = None
        self._stack_cache = {}

    @property
    def n_tasks(self) -> int:
        return len(self.sizes)

    def add_task(self, n_classes: int, mu_weight: Optional[torch.Tensor] = None,
                 sigma_weight: Optional[torch.Tensor] = None) -> None:
        """Append a head for ``n_classes`` new classes; PyTorch's Linear init unless given."""
        device = self.mu_weight[0].device if self.n_tasks else None
        pairs = [(self.mu_weight, self.mu_bias, mu_weight)]
        if self.variational:
            pairs.append((self.sigma_weight, self.sigma_bias, sigma_weight))
        for weights, biases, init in pairs:
            linear = nn.Linear(self.dim, self.dim, device=device)
            if init is not None:
                with torch.no_grad():
                    linear.weight.copy_(init)
            weights.append(linear.weight)
            biases.append(linear.bias)
        self.sizes.append(int(n_classes))
        self._layout = None

    def set_trainable(self, tasks: Sequence[int]) -> None:
        """Make exactly the heads of ``tasks`` trainable."""
        chosen = set(tasks)
        for k in range(self.n_tasks):
            for params in (self.mu_weight, self.mu_bias, self.sigma_weight, self.sigma_bias):
                if k < len(params):
                    params[k].requires_grad_(k in chosen)

    def layout(self, device):
        """(index (T, Cmax) into classes with C for padding, flat positions of real classes).

        None when all tasks have the same size: then grouping is a free reshape.
        """
        if len(set(self.sizes)) == 1:
            return None
        if self._layout is None or self._layout[0].device != device:
            c_max = max(self.sizes)
            total = sum(self.sizes)
            index = torch.full((self.n_tasks, c_max), total, dtype=torch.long)
            start = 0
            for k, size in enumerate(self.sizes):
                index[k, :size] = torch.arange(start, start + size)
                start += size
            real = (index.flatten() < total).nonzero().squeeze(1)
            self._layout = (index.to(device), real.to(device))
        return self._layout

    def forward(self, h: torch.Tensor):
        """μ and σ (None for deterministic heads) of refined features h (..., C, D)."""
        layout = self.layout(h.device)
        lead, dim = h.shape[:-2], h.shape[-1]
        if layout is None:
            grouped = h.reshape(lead + (self.n_tasks, self.sizes[0], dim))
        else:
            padded = torch.cat([h, h.new_zeros(lead + (1, dim))], dim=-2)
            grouped = padded[..., layout[0], :]                              # (..., T, Cmax, D)
        # Task-major rows (T, N, D) so one bmm applies each task's weights to its rows;
        # broadcasting (..., T, Cmax, D) @ (T, D, D) would copy the weights per image.
        rows = grouped.movedim(-3, 0)
        row_shape = rows.shape
        rows = rows.reshape(self.n_tasks, -1, dim)

        def apply(weights, biases):
            stacked_t, stacked_b = self._stacked(weights, biases)
            out = torch.baddbmm(stacked_b[:, None, :], rows, stacked_t)
            out = out.reshape(row_shape).movedim(0, -3).flatten(-3, -2)
            return out if layout is None else out[..., layout[1], :]

        mu = apply(self.mu_weight, self.mu_bias)
        if not self.variational:
            return mu, None
        sigma = SIGMA_SCALE * F.softplus(apply(self.sigma_weight, self.sigma_bias)) + SIGMA_FLOOR
        return mu, sigma

    def _stacked(self, weights, biases):
        """(T, D, D) transposed weights and (T, D) biases of all tasks.

        Without autograd (evaluation) the stacks are cached until a parameter changes:
        stacking copies T·D² values, which would cost more than the product itself.
        """
        params = list(weights) + list(biases)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return torch.stack(list(weights)).transpose(-1, -2), torch.stack(list(biases))
        key = tuple((p.data_ptr(), p._version) for p in params)  # _version counts in-place updates
        cached = self._stack_cache.get(id(weights))
        if cached is None or cached[0] != key:
            with torch.no_grad():
                stacked = (torch.stack(list(weights)).transpose(-1, -2).contiguous(),
                           torch.stack(list(biases)))
            cached = (key, stacked)
            self._stack_cache[id(weights)] = cached
        return cached[1]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_stack_cache"] = {}                 # derived data: not worth pickling
        return state

    def forward_looped(self, h: torch.Tensor):
        """The same as ``forward`` with a Python loop over tasks (reference style; benchmarks)."""
        mus, sigmas, start = [], [], 0
        for k, size in enumerate(self.sizes):
            part = h[..., start:start + size, :]
            mus.append(F.linear(part, self.mu_weight[k], self.mu_bias[k]))
            if self.variational:
                pre = F.linear(part, self.sigma_weight[k], self.sigma_bias[k])
                sigmas.append(SIGMA_SCALE * F.softplus(pre) + SIGMA_FLOOR)
            start += size
        return torch.cat(mus, dim=-2), torch.cat(sigmas, dim=-2) if self.variational else None


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


class ClapModel(MultimodalModule, DynamicModule):
    """CLAP4CLIP as an Avalanche dynamic module over frozen CLIP features.

    It grows one probabilistic head per training experience (language-initialised from
    the text statistics of the stream's classes) and scores all classes seen so far.
    ``forward`` returns the mean over M Monte-Carlo samples of the logits, (B, C), so any
    Avalanche strategy can train it as a plain classifier; ``forward_samples`` returns
    all M samples and the head statistics for CLAP's own loss.

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
        image_encoder: optional frozen ``FrozenCLIP`` for image inputs (B, 3, H, W).

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
                 eval_context: str = "per_image", image_encoder=None):
        super().__init__()
        for name, value in (("train_context", train_context), ("eval_context", eval_context)):
            if value not in CONTEXTS:
                raise ValueError(f"{name} must be one of {CONTEXTS}, got {value!r}")
        if language_init_classes not in LANGUAGE_INIT_CLASSES:
            raise ValueError(f"language_init_classes must be one of {LANGUAGE_INIT_CLASSES}, "
                             f"got {language_init_classes!r}")
        if mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
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
        object.__setattr__(self, "image_encoder", image_encoder)  # frozen: not a submodule

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
        if not self.training:
            return
        seen = self.n_seen_classes
        new = sorted({int(c) for c in experience.classes_in_this_experience} - set(range(seen)))
        if new:
            self.add_task(new)

    def add_task(self, classes: Sequence[int]) -> None:
        """Append a head for ``classes`` (the next contiguous labels) and freeze older heads."""
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
        self.heads.set_trainable([self.heads.n_tasks - 1])

    # ------------------------------------------------------------------ forward
    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised fp32 image features of images (B, 3, H, W) or features (B, D)."""
        if x.dim() == 4:
            if self.image_encoder is None:
                raise ValueError("image inputs need an image_encoder; pass features (B, D) otherwise")
            with torch.no_grad():
                x = self.image_encoder.encode_images(x)
        return F.normalize(x.float(), dim=-1)

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
                        context: Optional[str] = None,
                        present: Optional[torch.Tensor] = None) -> ClapOutput:
        """All M sampled logits (M, B, C) plus μ, σ and the mean of ε.

        ``present`` (default: ``present_override``) is a batch-wide modality mask."""
        images = self.encode_once(x)["image"]
        present = self.present_override if present is None else present
        self.last_present = present
        return self.sample(images, present, n_samples, context)

    def sample(self, images: torch.Tensor, present: Optional[torch.Tensor] = None,
               n_samples: Optional[int] = None, context: Optional[str] = None) -> ClapOutput:
        """:meth:`forward_samples` on encoded images, with the components of ``present``."""
        if self.n_seen_classes == 0:
            raise RuntimeError("the model has no heads yet: train it on an experience first")
        images, guidance = self._apply_mask(images, present)
        h = self.refined_text(images, context, guidance)
        mu, sigma = self.heads(h)
        base = self._scores(images, h + mu)                                 # (B, C)
        if sigma is None:
            return ClapOutput(base[None], mu, None, None)
        m = n_samples or self.mc_samples
        eps = torch.randn((m,) + mu.shape[-2:], device=mu.device)           # (M, C, D)
        return ClapOutput(base[None] + self._noise_scores(images, sigma, eps), mu, sigma, eps.mean(0))

    def head(self, feats, present: Optional[torch.Tensor] = None, *,
             mc_samples: bool = False) -> torch.Tensor:
        """log of the mean over M samples of softmax (B, C), or the raw (M, B, C) logits."""
        logits = self.sample(feats["image"], present).logits
        if mc_samples:
            return logits
        return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])

    def embed(self, feats, present: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The mean-over-samples logits (B, C): the image side is frozen, so only the
        text side's output can serve as CLAP's representation (docs/multimodal-plugins.md)."""
        return self.sample(feats["image"], present).mean_logits

    def logit_contributions(self, feats, present: Optional[torch.Tensor] = None):
        """The logit split additively by where the class weight comes from, (B, C) each:
        ``prior`` τ⟨x̂, t_c⟩ (zero-shot text), ``guidance`` τ⟨x̂, VGA_c⟩ and ``adapter``
        τ⟨x̂, z̄_c⟩ (the task head's sample mean). They sum to the mean logit."""
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over M samples of the logits, (B, C).

        The mean is linear in ε, so it is computed from one draw ε̄ ~ N(0, I/M): the
        same distribution as averaging M sampled logits (docs/clap4clip.md R8).
        """
        images, guidance = self._apply_mask(self.encode_once(x)["image"], self.present_override)
        self.last_present = self.present_override
        h = self.refined_text(images, guidance=guidance)
        mu, sigma = self.heads(h)
        logits = self._scores(images, h + mu)
        if sigma is not None:
            eps_mean = torch.randn(mu.shape[-2:], device=mu.device) / math.sqrt(self.mc_samples)
            logits = logits + self._noise_scores(images, sigma, eps_mean[None])[0]
        return logits

    def _scores(self, images, weights):
        """τ⟨x̂_b, w_c⟩ for class weights (C, D) or per-image (B, C, D)."""
        if weights.dim() == 2:
            return self.logit_scale * images @ weights.T
        return self.logit_scale * torch.einsum("bd,bcd->bc", images, weights)

    def _noise_scores(self, images, sigma, eps):
        """τ⟨x̂_b, σ_c ⊙ ε_c^(m)⟩, (M, B, C), without forming (M, B, C, D)."""
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
            self.heads.set_trainable([self.heads.n_tasks - 1])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def language_init(text_mean: torch.Tensor, text_variance: torch.Tensor):
    """(W_μ, W_σ) = (ĒᵀĒ / D, VᵀV / D) from template means Ē and variances V (C, D)."""
    dim = text_mean.shape[1]
    return text_mean.T @ text_mean / dim, text_variance.T @ text_variance / dim


def kl_to_standard_normal(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(N(μ, σ²) ‖ N(0, 1)) = (σ² + μ² − 1)/2 − log σ."""
    return 0.5 * (sigma.pow(2) + mu.pow(2) - 1) - torch.log(sigma)


def kl_loss(mu: torch.Tensor, sigma: torch.Tensor, task_of_class: torch.Tensor,
            tasks: Sequence[int]) -> torch.Tensor:
    """Σ_{k ∈ tasks} mean over task k's classes of Σ_d KL(q_c ‖ N(0, I)).

    μ, σ are (C, D) or per image (B, C, D); per-image values are averaged over the batch.
    """
    per_class = kl_to_standard_normal(mu, sigma).sum(-1)
    if per_class.dim() == 2:
        per_class = per_class.mean(0)
    return _sum_of_task_means(per_class, task_of_class, tasks)


def language_loss(text_mean: torch.Tensor, z_mean: torch.Tensor, task_of_class: torch.Tensor,
                  tasks: Sequence[int]) -> torch.Tensor:
    """Σ_{k ∈ tasks} CE(Ē_k z̄_kᵀ, identity): each class's prompts nearest its own z̄.

    Equal to the reference's double loop over M samples and L templates, because both
    means are linear (docs/clap4clip.md R10). z̄ per image (B, C, D) is averaged over the batch.
    """
    if z_mean.dim() == 3:
        z_mean = z_mean.mean(0)
    total = z_mean.new_zeros(())
    for k in tasks:
        members = (task_of_class == k).nonzero().squeeze(1)
        scores = text_mean[members] @ z_mean[members].T
        total = total + F.cross_entropy(scores, torch.arange(len(members), device=scores.device))
    return total


def _sum_of_task_means(per_class, task_of_class, tasks):
    n_tasks = int(task_of_class.max()) + 1
    sums = torch.zeros(n_tasks, device=per_class.device).index_add(0, task_of_class, per_class)
    counts = torch.bincount(task_of_class, minlength=n_tasks).clamp(min=1)
    return (sums / counts)[list(tasks)].sum()
