"""What a class-incremental stream carries besides its experiences: :class:`StreamInfo`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple


@dataclass(frozen=True, eq=False)
class StreamInfo:
    """The description of a benchmark built by :func:`scenarios.class_incremental`,
    available as ``benchmark.info``.

    Attributes:
        dataset_name: registry name of the dataset, e.g. ``"cifar100"``.
        class_order: original class id of each label (label i is ``class_order[i]``).
        class_names: class names in label order.
        templates: the prompt templates of ``text_features`` (the dataset's unless
            given; empty for feature-only streams).
        classes_per_experience: the labels of each experience.
        level: ``"image"`` or ``"features"``.
        fingerprint: identifies the data content (the feature cache keys on it).
        text_features: class text statistics in label order
            (:class:`clap4cl.encoders.text_features.ClassTextFeatures`): the stream's own
            (``synthetic``), or computed from ``class_names`` and ``templates`` when the
            benchmark was built with a backbone; None otherwise (streams without class
            text, or image streams built without a backbone).
        input_dims: width of each modality for streams of several modalities without
            class text (``two_modality``), else None.
        null_image: the embedding standing for "no image" when the stream defines one
            (``synthetic``), else None.
        skipped_images: the image files left out of the stream because they cannot be
            decoded (``on_bad_image="skip"``).
    """

    dataset_name: str
    class_order: Tuple[int, ...]
    class_names: Tuple[str, ...]
    templates: Tuple[str, ...]
    classes_per_experience: Tuple[Tuple[int, ...], ...]
    level: str
    fingerprint: str
    text_features: Optional[Any] = None
    input_dims: Optional[Mapping[str, int]] = None
    null_image: Optional[Any] = None
    skipped_images: Tuple[str, ...] = ()

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_experiences(self) -> int:
        return len(self.classes_per_experience)
