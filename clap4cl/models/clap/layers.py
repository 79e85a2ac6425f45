"""CLAP4CLIP's layers: the visual-guided attention (VGA) and the per-task Gaussian heads.

    h_c = t_c + VGA(t, x̂)_c                      refined class text feature
    μ_c = W_μ[k] h_c + b_μ[k],  σ_c = 0.999·softplus(W_σ[k] h_c + b_σ[k]) + 0.001

where k is the task (experience) that introduced class c. The heads of all tasks are
evaluated with one batched matrix product (see docs/clap4clip.md).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clap4cl.models.choices import CONTEXTS

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
        if context == "batch":
            return self.layer(queries[None], images[None], tgt_mask=task_block_mask(task_of_class))[0]
        if context == "per_image":
            return self.per_image(queries, task_of_class)(images)
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")

    def per_image(self, queries: torch.Tensor, task_of_class: torch.Tensor):
        """The ``per_image`` map images (B, D) -> (B, C, D), with everything that does not
        depend on the images (the queries' self-attention, the query side of the
        factored first feed-forward layer) done once, so callers can apply it in chunks."""
        layer = self.layer
        mask = task_block_mask(task_of_class)
        attended = layer.self_attn(queries, queries, queries, attn_mask=mask, need_weights=False)[0]
        x = layer.norm1(queries + layer.dropout1(attended))                   # (C, D)
        factored = None
        if not (self.training and (layer.dropout2.p > 0 or layer.multihead_attn.dropout > 0)):
            factored = self._query_side(x)
        return lambda images: self._attend_images(x, images, factored)

    def _attend_images(self, x, images, factored):
        layer = self.layer
        cross = self._single_key_cross_attention(images, x.shape[0])          # (B, C|1, D)
        y = layer.norm2(x[None] + layer.dropout2(cross))                      # (B, C, D)
        if factored is not None:
            hidden = self._factored_linear1(factored, cross[:, 0])
        else:
            hidden = layer.linear1(y)
        ffn = layer.linear2(layer.dropout(layer.activation(hidden)))
        return layer.norm3(y + layer.dropout3(ffn))

    def _query_side(self, x):
        """The terms of :meth:`_factored_linear1` that only depend on the queries x (C, D)."""
        norm, linear = self.layer.norm2, self.layer.linear1
        x_c = x - x.mean(-1, keepdim=True)                                    # (C, D)
        weight = linear.weight * norm.weight                                  # (F, D)
        offset = linear.weight @ norm.bias + linear.bias                      # (F,)
        return x_c, (x_c * x_c).sum(-1), x_c @ weight.T, weight, offset

    def _factored_linear1(self, query_side, k):
        """linear1(norm2(x_c + k_b)) for every (image b, class c), (B, C, F), without the
        B·C·D·F product: LayerNorm of a sum is γ ⊙ r_bc (x̃_c + k̃_b) + β with centred
        parts x̃, k̃ and one scalar r_bc = 1/std per pair, so the map is
        r_bc (P_c + Q_b) + e with P = x̃ (W₁ diag γ)ᵀ, Q = k̃ (W₁ diag γ)ᵀ, e = W₁β + b₁."""
        x_c, x_square, p, weight, offset = query_side
        k_c = k - k.mean(-1, keepdim=True)                                    # (B, D)
        variance = (x_square[None, :] + (k_c * k_c).sum(-1)[:, None]
                    + 2 * k_c @ x_c.T) / x_c.shape[-1]                         # (B, C)
        scale = torch.rsqrt(variance.clamp_min(0) + self.layer.norm2.eps)
        parts = p[None] + (k_c @ weight.T)[:, None]                           # (B, C, F)
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
            groups = self._trainable_groups(weights, biases)
            if groups is None:
                stacked_t, stacked_b = self._stacked(weights, biases)
                out = torch.baddbmm(stacked_b[:, None, :], rows, stacked_t)
            else:
                out = torch.cat([torch.baddbmm(b[:, None, :], rows[start:end], w_t)
                                 for start, end, w_t, b in groups])
            out = out.reshape(row_shape).movedim(0, -3).flatten(-3, -2)
            return out if layout is None else out[..., layout[1], :]

        mu = apply(self.mu_weight, self.mu_bias)
        if not self.variational:
            return mu, None
        sigma = SIGMA_SCALE * F.softplus(apply(self.sigma_weight, self.sigma_bias)) + SIGMA_FLOOR
        return mu, sigma

    def _trainable_groups(self, weights, biases):
        """With autograd and some heads frozen: [(start, end, (n, D, D) transposed
        weights, (n, D) biases)] for runs of consecutive tasks that train or not, else None.

        Stacking every head for autograd copies T·D² values per step and its backward
        computes a weight gradient for every head; the frozen runs instead use a stack
        cached until a parameter changes (same layout, so the same products); a single
        training head (the newest, in CLAP's main phase) is not copied at all.
        """
        if not torch.is_grad_enabled():
            return None
        trains = [weights[k].requires_grad or biases[k].requires_grad for k in range(len(weights))]
        if all(trains) or not any(trains):
            return None
        groups, start = [], 0
        for k in range(1, len(trains) + 1):
            if k < len(trains) and trains[k] == trains[start]:
                continue
            if trains[start] and k - start == 1:      # a view, laid out as the stack would be
                w_t, b = weights[start].T[None], biases[start][None]
            elif trains[start]:
                w_t = torch.stack(list(weights[start:k])).transpose(-1, -2)
                b = torch.stack(list(biases[start:k]))
            else:
                w_t, b = self._frozen_run(weights, biases, start, k)
            groups.append((start, k, w_t, b))
            start = k
        return groups

    def _frozen_run(self, weights, biases, start, end):
        params = list(weights[start:end]) + list(biases[start:end])
        key = (start, end) + tuple((p.data_ptr(), p._version) for p in params)
        slot = ("frozen", id(weights))
        cached = self._stack_cache.get(slot)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                stacked = (torch.stack(list(weights[start:end])).transpose(-1, -2),
                           torch.stack(list(biases[start:end])))
            cached = (key, stacked)
            self._stack_cache[slot] = cached
        return cached[1]

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
