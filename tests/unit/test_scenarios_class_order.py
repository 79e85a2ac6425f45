"""Class orders and experience sizes."""
import numpy as np
import pytest

from clap4cl.errors import UserError
from scenarios.class_order import (classes_per_experience, default_class_order,
                                   validate_class_order)


def test_run_0_is_the_classic_seed_1993_cifar100_order():
    order = default_class_order(100, run=0)
    assert order[:10] == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]
    assert sorted(order) == list(range(100))
    assert all(type(c) is int for c in order)


def test_run_10_uses_seed_2003():
    assert default_class_order(100, run=10)[:10] == [59, 15, 63, 55, 52, 18, 67, 40, 76, 17]
    assert default_class_order(100, 10) == np.random.RandomState(2003).permutation(100).tolist()


def test_valid_order_is_returned_as_ints():
    assert validate_class_order(np.array([2, 0, 1]), 3) == [2, 0, 1]


@pytest.mark.parametrize("order, fragment", [
    ([0, 1, 1], "repeated ids [1]"),
    ([0, 1, 3], "out of range [3]"),
    ([0, 1], "missing ids [2]"),
    (["a", "b", "c"], "integer class ids"),
    ([0.5, 1, 2], "integer class ids"),
])
def test_order_that_is_not_a_permutation_is_a_one_line_user_error(order, fragment):
    with pytest.raises(UserError) as info:
        validate_class_order(order, 3)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_equal_increments():
    assert classes_per_experience(100, 10) == [10] * 10
    assert classes_per_experience(10, 1) == [10]


def test_larger_first_experience_then_equal_increments():
    assert classes_per_experience(100, 6, first_experience_classes=50) == [50, 10, 10, 10, 10, 10]
    assert classes_per_experience(10, 1, first_experience_classes=10) == [10]


@pytest.mark.parametrize("args, fragment", [
    ((10, 11), "11 experiences for 10 classes"),
    ((10, 3), "first_experience_classes"),
    ((10, 0), "positive integer"),
    ((10, 3, 5), "cannot be split equally into 2"),
    ((10, 4, 9), "cannot be split equally"),
    ((10, 2, 0), "first_experience_classes must be"),
    ((10, 1, 4), "must be 10"),
])
def test_impossible_splits_are_one_line_user_errors(args, fragment):
    with pytest.raises(UserError) as info:
        classes_per_experience(*args)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
