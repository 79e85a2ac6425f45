"""The reliability entry of a step, computed alone or from the evaluation's own forward passes.

The report (``clap4cl.evaluation.modality_metrics.reliability_report``) scores the seen test
data once per modality subset: the full model first, then each reduced subset, batch after
batch of the concatenated experiences, a sampling model drawing its ε from one generator
in that order. With CLAP's ``per_image`` context the full model's per-(image, class) work
(the VGA and the heads) depends neither on ε nor on the batch mates, and the step's
evaluation has just done it for every seen test image. :class:`SharedReliabilityPass`
watches that evaluation (``ClapModel.observing_per_image``) and forms the full subset's
logits from it with the ε the report would have drawn, in the report's order; the
reduced subsets (no VGA per image) are computed as the report computes them. Same draws,
same numbers up to fp32 rounding, and the most expensive pass of the evaluation is no
longer done twice (docs/benchmarks.md, "The full protocol").
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch.utils.data import ConcatDataset, DataLoader

from clap4cl.evaluation.modality_metrics import (ReliabilityAccumulator, class_prior_probe,
                                                 evaluation_subsets, log_probs, metric_pairs,
                                                 reliability_report)
from clap4cl.models.modality_subsets import full
from clap4cl.models.multimodal import MultimodalModule


def reliability_applies(model) -> bool:
    """Multimodal models, CLAP only once it has a null image."""
    if not isinstance(model, MultimodalModule):
        return False
    return not (hasattr(model, "null_image") and not model.null_image.any())


def reliability_entry(model, test_stream, step: int, config, device,
                      generator: Optional[torch.Generator] = None,
                      shared: Optional["SharedReliabilityPass"] = None) -> Optional[Dict[str, Any]]:
    """VRR, per-removed-modality VRR, mean violation and per-subset accuracy on the seen
    test data (multimodal models; CLAP only once it has a null image), plus CLAP's class
    prior probe. A sampling model (CLAP) draws from ``generator``. ``shared``: a
    :class:`SharedReliabilityPass` that watched the step's evaluation; its report is used
    when it saw every seen test image (else the report is computed here)."""
    if not reliability_applies(model):
        return None
    if not hasattr(model, "forward_samples"):
        generator = None                     # deterministic: nothing to draw
    if shared is not None and shared.complete:
        report, generator = shared.result(), shared.generator
    else:
        report = reliability_report(model, seen_test_data(test_stream, step),
                                    batch_size=config["eval"]["batch_size"], device=device,
                                    pairs=config["eval"]["reliability_pairs"], generator=generator)
    entry = {"step": step, **report}
    if model.allow_empty:
        entry.update(class_prior_probe(model, generator))
    return entry


def seen_test_data(test_stream, step: int) -> List:
    return [test_stream[k].dataset.eval() for k in range(step + 1)]


class SharedReliabilityPass:
    """The reliability report of :func:`reliability_report`, built while the step's
    evaluation runs (see the module docstring).

    Within :meth:`watching`, every chunk the model evaluates per image is compared with
    the next rows of the seen test data; a chunk that is those rows (the strategy's
    evaluation goes through the experiences in order) gives the full subset's logits of
    these rows, with the ε of their report batch. Any other chunk (a second pass over the
    same rows, other data) is ignored. :attr:`complete` tells whether every row was seen;
    if not, the caller computes the report as usual, with a fresh generator.
    """

    def __init__(self, model, datasets, *, batch_size: int, pairs: str,
                 generator: torch.Generator, device="cpu"):
        self.model, self.batch_size, self.generator = model, int(batch_size), generator
        chosen = metric_pairs(model, pairs)
        self.subsets = evaluation_subsets(model, chosen)
        if self.subsets[0] != full(model.n_modalities):
            raise ValueError("the reliability report scores the full model first")
        self.accumulator = ReliabilityAccumulator(model.modality_names, chosen)
        with torch.no_grad():
            rows = [(model.encode(x.to(device))["image"], torch.as_tensor(y))
                    for x, y, *_ in DataLoader(ConcatDataset(list(datasets)), batch_size=batch_size,
                                               generator=torch.Generator())]
        self.images = torch.cat([x for x, _ in rows])
        self.targets = torch.cat([y for _, y in rows])
        self.position = 0
        self.pieces: Dict[tuple, List[torch.Tensor]] = {s: [] for s in self.subsets}
        self._batch_eps = (-1, None)          # (report batch, the full model's ε in it)
        self._scoring_subsets = False

    @classmethod
    def for_step(cls, model, test_stream, step: int, config, device,
                 generator: torch.Generator) -> Optional["SharedReliabilityPass"]:
        """A pass for CLAP with the VGA and the ``per_image`` context whose reliability is
        reported, else None (without the VGA no chunk is evaluated per image, so a pass
        would only load the seen test data to fall back)."""
        if (config["eval"]["context"] != "per_image" or not hasattr(model, "observing_per_image")
                or model.vga is None or not reliability_applies(model)):
            return None
        return cls(model, seen_test_data(test_stream, step), batch_size=config["eval"]["batch_size"],
                   pairs=config["eval"]["reliability_pairs"], generator=generator, device=device)

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        with self.model.observing_per_image(self._observe):
            yield

    @property
    def complete(self) -> bool:
        return self.position == len(self.images)

    def result(self) -> Dict[str, float]:
        """The report's metrics (call once :attr:`complete`)."""
        self.accumulator.update({s: torch.cat(self.pieces[s]) for s in self.subsets}, self.targets)
        return self.accumulator.result()

    def _observe(self, images: torch.Tensor, base: torch.Tensor, sigma: Optional[torch.Tensor]):
        start, end = self.position, self.position + images.shape[0]
        if (self._scoring_subsets or end > len(self.images)
                or not torch.equal(images, self.images[start:end])):
            return
        self.position = end
        row = start
        while row < end:                      # the rows of each report batch in the chunk
            batch = row // self.batch_size
            stop = min(end, (batch + 1) * self.batch_size)
            part = slice(row - start, stop - start)
            eps = self._full_model_eps(batch)
            logits = base[part][None]
            if eps is not None:
                logits = logits + self.model.noise_scores(images[part], sigma[part], eps)
            self.pieces[self.subsets[0]].append(log_probs(self.model.log_predictive(logits)))
            row = stop

    def _full_model_eps(self, batch: int) -> Optional[torch.Tensor]:
        """The ε the report draws for the full model in ``batch``; on the batch's first
        rows, also the reduced subsets' scores (their draws follow the full model's)."""
        if self._batch_eps[0] != batch:
            eps = self.model.draw_eps(self.generator)
            rows = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
            feats = {"image": self.images[rows]}
            n = feats["image"].shape[0]
            self._scoring_subsets = True      # the model's own evaluation passes are not rows
            try:
                for s in self.subsets[1:]:
                    present = torch.tensor(s, device=self.images.device).expand(n, -1)
                    self.pieces[s].append(log_probs(self.model.head(feats, present,
                                                                    generator=self.generator)))
            finally:
                self._scoring_subsets = False
            self._batch_eps = (batch, eps)
        return self._batch_eps[1]
