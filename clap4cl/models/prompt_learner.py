"""Learned prompts (CoOp): context vectors in the text encoder's token-embedding space.

Every class c gets the prompt ``[SOS][ctx_1 … ctx_n][name tokens][.][EOT]``: the n
context vectors are shared by all classes and are the only trainable values; the frozen
open_clip text transformer runs on the prompts and gradients flow back to the context.
See docs/prompt-learning.md. One file: the three text passes below must agree exactly
on the prompt layout and tokens the learner builds.

Three exact ways to run the text transformer (``text_pass``):

* ``full``: every prompt padded to the 77-token context, as open_clip's ``encode_text``;
* ``truncated``: prompts cut after the longest end-of-text token of the chunk. The
  attention is causal, so no position before EOT ever sees a later one;
* ``shared_prefix`` (default): as ``truncated``, and the start token plus the context,
  identical for every class, are run once per layer; each class's suffix attends to the
  shared prefix keys and values. Causality makes the prefix's hidden states the same in
  every prompt, so this is the same computation up to floating-point rounding.
"""
from __future__ import annotations

import weakref
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from clap4cl.models.choices import TEXT_PASSES

PLACEHOLDER = "x"

# Frozen text towers by backbone identity: a deep-copied or unpickled prompt learner
# re-attaches to the backbone the process has loaded instead of copying its weights.
_TOWERS: "weakref.WeakValueDictionary[str, nn.Module]" = weakref.WeakValueDictionary()


class TextParts:
    """The pieces of an open_clip text tower a prompt pass needs (CLIP or CustomTextCLIP)."""

    def __init__(self, model: nn.Module):
        tower = model.text if hasattr(model, "text") and hasattr(model.text, "token_embedding") \
            else model
        for name in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
            if not hasattr(tower, name):
                raise ValueError(f"prompt learning needs an open_clip text transformer; "
                                 f"{type(model).__name__} has no {name}")
        self.token_embedding = tower.token_embedding
        self.positional_embedding = tower.positional_embedding
        self.transformer = tower.transformer
        self.ln_final = tower.ln_final
        self.text_projection = getattr(tower, "text_projection", None)
        self.attn_mask = getattr(tower, "attn_mask", None)
        self.pool_type = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
        self.eos_id = getattr(tower, "text_eos_id", getattr(tower, "eos_id", None))
        self.context_length = int(self.positional_embedding.shape[0])
        self.width = int(self.token_embedding.weight.shape[1])
        self.dtype = self.transformer.get_cast_dtype()
        blocks = list(self.transformer.resblocks)
        self.causal = self.attn_mask is not None
        # The shared-prefix pass re-implements the default block; other blocks are run
        # whole (truncated pass), which needs only causality.
        self.plain_blocks = all(type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv")
                                and b.attn.batch_first and b.attn.dropout == 0 for b in blocks)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        proj = self.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj


class PromptLearner(nn.Module):
    """n_ctx learnable context vectors shared by the classes, and the text pass over them.

    Args:
        backbone: a :class:`~clap4cl.encoders.backbones.FrozenCLIP` (its text tower
            stays frozen and in eval mode; it is referenced, not a submodule).
        class_names: every class of the stream, in label order.
        n_ctx: number of context vectors (ignored with a phrase ``init``).
        init: ``"random"`` (N(0, init_std²), the reference) or a phrase such as
            ``"a photo of a"``: the context starts as the phrase's token embeddings and
            n_ctx is its token count.
        init_std: standard deviation of random contexts.
        expandable: one fresh random context per experience, all averaged into the one
            context every class uses (the reference's expandable prompts); only the
            newest trains in the main phase.
        text_pass: ``shared_prefix``, ``truncated`` or ``full`` (see the module doc).
        text_batch: classes per text-encoder call (0: all at once); bounds memory.
    """

    def __init__(self, backbone, class_names: Sequence[str], *, n_ctx: int = 16,
                 init: str = "random", init_std: float = 0.02, expandable: bool = False,
                 text_pass: str = "shared_prefix", text_batch: int = 0):
        super().__init__()
        if text_pass not in TEXT_PASSES:
            raise ValueError(f"text_pass must be one of {TEXT_PASSES}, got {text_pass!r}")
        if text_batch < 0:
            raise ValueError(f"text_batch must be >= 0, got {text_batch}")
        self.text_pass = text_pass
        self.text_batch = int(text_batch)
        self.init_std = float(init_std)
        self.expandable = bool(expandable)
        self.class_names = tuple(class_names)
        self.backbone_identity = backbone.identity
        self._attach(backbone)
        parts = self.parts
        phrase = None if init == "random" else str(init).strip()
        if phrase is not None:
            phrase_tokens = self._tokens([phrase])[0]
            n_ctx = int(self._eot_positions(phrase_tokens[None])[0]) - 1
            prefix = phrase
        else:
            prefix = " ".join([PLACEHOLDER] * n_ctx)
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
        self.n_ctx = int(n_ctx)
        prompts = [f"{prefix} {name}." for name in self.class_names]
        tokens = self._tokens(prompts)
        eot = self._eot_positions(tokens)
        if bool((eot <= self.n_ctx).any()) or bool((tokens[:, 1:1 + self.n_ctx] != tokens[0, 1:1 + self.n_ctx]).any()):
            raise ValueError("the context tokens are not the same in every prompt: the class "
                             "names do not fit after the context in the text encoder's "
                             f"{parts.context_length} tokens")
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("eot", eot, persistent=False)
        self.contexts = nn.ParameterList()
        if phrase is not None:
            with torch.no_grad():
                init_ctx = parts.token_embedding(tokens[:1, 1:1 + self.n_ctx].to(self._device()))[0]
            self.contexts.append(nn.Parameter(init_ctx.detach().float().cpu().clone()))
        else:
            self.contexts.append(self._random_context())
        self.encoder_calls = 0
        self._eval_cache = None

    # ------------------------------------------------------------------ tower
    def _attach(self, backbone) -> None:
        object.__setattr__(self, "backbone", backbone)          # frozen: not a submodule
        object.__setattr__(self, "parts", TextParts(backbone.model))
        _TOWERS[backbone.identity] = backbone

    def attach(self, backbone) -> None:
        """Re-attach the frozen backbone (after unpickling in a process that lacks it)."""
        if backbone.identity != self.backbone_identity:
            raise ValueError(f"prompts were learned on {self.backbone_identity}, "
                             f"not {backbone.identity}")
        self._attach(backbone)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("backbone", None)
        state.pop("parts", None)
        state["_eval_cache"] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        backbone = _TOWERS.get(self.backbone_identity)
        if backbone is not None:
            self._attach(backbone)

    def _tower(self) -> TextParts:
        parts = self.__dict__.get("parts")
        if parts is None:
            raise RuntimeError(f"no text encoder attached: load the backbone "
                               f"{self.backbone_identity} and call attach(backbone)")
        return parts

    def _device(self):
        return self._tower().token_embedding.weight.device

    def _tokens(self, texts: List[str]) -> torch.Tensor:
        return self.backbone.tokenizer(texts).long().cpu()

    def _eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        parts = self._tower()
        if parts.pool_type == "eos" and parts.eos_id is not None:
            return (tokens == parts.eos_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)

    # ------------------------------------------------------------------ context
    def _random_context(self) -> nn.Parameter:
        return nn.Parameter(torch.randn(self.n_ctx, self._tower().width) * self.init_std)

    @property
    def n_contexts(self) -> int:
        return len(self.contexts)

    def context(self) -> torch.Tensor:
        """(n_ctx, W) the context every class uses: the mean of all contexts."""
        if len(self.contexts) == 1:
            return self.contexts[0]
        return torch.stack(list(self.contexts)).mean(0)

    def add_context(self) -> None:
        """Append a fresh random context (expandable prompts); older ones stop training."""
        for p in self.contexts:
            p.requires_grad_(False)
        new = self._random_context().to(self.contexts[0].device)
        self.contexts.append(new)

    def set_trainable(self, which: str) -> None:
        """``all`` contexts, the ``newest`` only, or ``none``."""
        for k, p in enumerate(self.contexts):
            p.requires_grad_(which == "all" or (which == "newest" and k == len(self.contexts) - 1))

    def version(self):
        """Changes whenever a context changes (in-place updates bump ``_version``)."""
        return tuple((p.data_ptr(), p._version) for p in self.contexts)

    # ------------------------------------------------------------------ text pass
    def forward(self, n_classes: int) -> torch.Tensor:
        """(n_classes, D) L2-normalised text features of classes 0..n_classes-1.

        With autograd on and a trainable context this is a fresh pass (gradients reach
        the context); otherwise the features are cached until the context changes."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.contexts):
            return self.encode(range(n_classes))
        key = (n_classes, self.version(), self.text_pass)
        if self._eval_cache is None or self._eval_cache[0] != key:
            with torch.no_grad():
                self._eval_cache = (key, self.encode(range(n_classes)))
        return self._eval_cache[1]

    def encode(self, classes: Sequence[int], text_pass: Optional[str] = None) -> torch.Tensor:
        """Text features (len(classes), D), L2-normalised, through ``text_pass`` (default:
        the learner's), in chunks of ``text_batch`` classes."""
        text_pass = text_pass or self.text_pass
        parts = self._tower()
        if text_pass != "full" and not parts.causal:
            text_pass = "full"                    # a bidirectional tower sees the padding
        if text_pass == "shared_prefix" and not parts.plain_blocks:
            text_pass = "truncated"
        index = torch.as_tensor(list(classes), dtype=torch.long)
        if len(index) == 0:
            return torch.empty(0, self.backbone.embed_dim, device=self._device())
        ctx = self.context()
        step = self.text_batch or len(index)
        run = {"full": self._full, "truncated": self._truncated,
               "shared_prefix": self._shared_prefix}[text_pass]
        out = [run(ctx, index[i:i + step]) for i in range(0, len(index), step)]
        return F.normalize(torch.cat(out).float(), dim=-1)

    def _embeddings(self, ctx, index, length):
        """Token embeddings (C, length, W) with the context in positions 1..n_ctx."""
        parts = self.parts
        device = self._device()
        tokens = self.tokens[index, :length].to(device)
        emb = parts.token_embedding(tokens).to(parts.dtype)
        ctx = ctx.to(device=device, dtype=parts.dtype)[None].expand(len(index), -1, -1)
        return torch.cat([emb[:, :1], ctx, emb[:, 1 + self.n_ctx:]], dim=1)

    def _pool(self, x, rows):
        return self.parts.project(self.parts.ln_final(x[torch.arange(len(rows)), rows]))

    def _full(self, ctx, index):
        return self._through_transformer(ctx, index, self.parts.context_length)

    def _truncated(self, ctx, index):
        return self._through_transformer(ctx, index, int(self.eot[index].max()) + 1)

    def _through_transformer(self, ctx, index, length):
        parts = self.parts
        self.encoder_calls += 1
        x = self._embeddings(ctx, index, length) + parts.positional_embedding[:length].to(parts.dtype)
        mask = parts.attn_mask[:length, :length] if parts.attn_mask is not None else None
        x = parts.transformer(x, attn_mask=mask)
        return self._pool(x, self.eot[index].to(x.device))

    def _shared_prefix(self, ctx, index):
        parts = self.parts
        self.encoder_calls += 1
        device = self._device()
        n_prefix = 1 + self.n_ctx
        length = int(self.eot[index].max()) + 1
        pos = parts.positional_embedding[:length].to(parts.dtype)
        sos = parts.token_embedding(self.tokens[:1, :1].to(device)).to(parts.dtype)   # (1, 1, W)
        prefix = torch.cat([sos, ctx.to(device=device, dtype=parts.dtype)[None]], 1) + pos[:n_prefix]
        suffix = parts.token_embedding(self.tokens[index, n_prefix:length].to(device)).to(parts.dtype)
        suffix = suffix + pos[n_prefix:]
        n_suffix = length - n_prefix
        i = torch.arange(n_suffix, device=device)
        allowed = torch.cat([torch.ones(n_suffix, n_prefix, dtype=torch.bool, device=device),
                             i[None, :] <= i[:, None]], dim=1)                 # (S, P + S)
        for block in parts.transformer.resblocks:
            prefix, suffix = _prefix_block(block, prefix, suffix, allowed)
        return self._pool(suffix, (self.eot[index] - n_prefix).to(device))


def _prefix_block(block, prefix, suffix, allowed):
    """One pre-LN residual attention block on a shared prefix (1, P, W) and per-class
    suffixes (C, S, W) that attend causally to the prefix and to themselves."""
    attn = block.attn
    heads = attn.num_heads
    n_cls, n_suffix, width = suffix.shape

    def split(x):                             # (N, L, 3W) -> 3 x (N, H, L, W/H)
        q, k, v = x.chunk(3, dim=-1)
        shape = x.shape[:2] + (heads, width // heads)
        return [t.reshape(shape).transpose(1, 2) for t in (q, k, v)]

    qp, kp, vp = split(F.linear(block.ln_1(prefix), attn.in_proj_weight, attn.in_proj_bias))
    qs, ks, vs = split(F.linear(block.ln_1(suffix), attn.in_proj_weight, attn.in_proj_bias))
    out_p = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)
    keys = torch.cat([kp.expand(n_cls, -1, -1, -1), ks], dim=2)
    values = torch.cat([vp.expand(n_cls, -1, -1, -1), vs], dim=2)
    out_s = F.scaled_dot_product_attention(qs, keys, values, attn_mask=allowed)

    def merge(out, x):
        out = out.transpose(1, 2).reshape(x.shape)
        x = x + block.ls_1(attn.out_proj(out))
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    return merge(out_p, prefix), merge(out_s, suffix)
