"""Class orders and the number of classes of each experience.

The reference (and iCaRL / PyCIL) order for run r is ``RandomState(1993 + r).permutation(n)``:
for CIFAR-100, run 0 starts 68, 56, 78, 8, 23 and run 10 (seed 2003) starts 59, 15, 63, 55, 52.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from clap4cl.errors import UserError

BASE_SEED = 1993


def default_class_order(n_classes: int, run: int = 0) -> List[int]:
    """The seeded class order of ``run``: ``RandomState(1993 + run).permutation(n_classes)``."""
    if isinstance(run, bool) or not isinstance(run, (int, np.integer)) or BASE_SEED + run < 0:
        raise UserError(f"run must be an integer >= {-BASE_SEED}, got {run!r}")
    order = np.random.RandomState(BASE_SEED + int(run)).permutation(int(n_classes))
    return [int(c) for c in order]


def validate_class_order(order: Sequence[int], n_classes: int) -> List[int]:
    """``order`` as a list of ints, or UserError if it is not a permutation of range(n_classes)."""
    try:
        values = [_as_int(c) for c in order]
    except (TypeError, ValueError):
        raise UserError(f"class_order must be a list of integer class ids, got {order!r}") from None
    if sorted(values) != list(range(n_classes)):
        problem = _permutation_problem(values, n_classes)
        raise UserError(f"class_order must be a permutation of 0..{n_classes - 1} "
                        f"(each class exactly once): {problem}")
    return values


def _as_int(value) -> int:
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(value)
    return int(value)


def _permutation_problem(values: List[int], n_classes: int) -> str:
    out_of_range = sorted({v for v in values if not 0 <= v < n_classes})
    if out_of_range:
        return f"ids out of range {out_of_range[:5]}"
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        return f"repeated ids {duplicates[:5]}"
    missing = sorted(set(range(n_classes)) - set(values))
    return f"missing ids {missing[:5]}{' ...' if len(missing) > 5 else ''}"


def classes_per_experience(n_classes: int, n_experiences: int,
                           first_experience_classes: Optional[int] = None) -> List[int]:
    """How many classes each experience gets.

    Equal increments (``n_classes / n_experiences`` each), or ``first_experience_classes``
    in the first experience and the rest split equally over the others. Raises
    UserError when that is impossible.
    """
    if isinstance(n_experiences, bool) or not isinstance(n_experiences, (int, np.integer)) \
            or n_experiences < 1:
        raise UserError(f"n_experiences must be a positive integer, got {n_experiences!r}")
    if n_experiences > n_classes:
        raise UserError(f"{n_experiences} experiences for {n_classes} classes: every experience "
                        f"needs at least one class, use n_experiences <= {n_classes}")
    if first_experience_classes is None:
        return _equal_increments(n_classes, n_experiences)
    return _larger_first_experience(n_classes, n_experiences, first_experience_classes)


def _equal_increments(n_classes: int, n_experiences: int) -> List[int]:
    if n_classes % n_experiences:
        raise UserError(f"{n_classes} classes cannot be split equally into {n_experiences} "
                        f"experiences: choose n_experiences dividing {n_classes}, or set "
                        f"first_experience_classes so that the rest divides evenly")
    return [n_classes // n_experiences] * n_experiences


def _larger_first_experience(n_classes: int, n_experiences: int, first: int) -> List[int]:
    if isinstance(first, bool) or not isinstance(first, (int, np.integer)) \
            or not 1 <= first <= n_classes:
        raise UserError(f"first_experience_classes must be an integer in 1..{n_classes}, "
                        f"got {first!r}")
    rest, others = n_classes - first, n_experiences - 1
    if others == 0:
        if rest:
            raise UserError(f"with 1 experience, first_experience_classes must be {n_classes} "
                            f"(all classes), got {first}")
        return [first]
    if rest < others or rest % others:
        raise UserError(f"the {rest} classes after the first experience ({first}) cannot be "
                        f"split equally into {others} experiences: change "
                        f"first_experience_classes or n_experiences")
    return [int(first)] + [rest // others] * others
