"""Row agreement between production's and the shadow's outputs, on tiny hand-built answers."""

import numpy as np
import pytest

from serving.agreement import agreement


def test_labels_decide_when_the_model_has_any_and_scores_are_ignored():
    production = {"label": np.array([0, 1, 2, 1]),
                  "probabilities": np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.3, 0.7]])}
    shadow = {"label": np.array([0, 1, 1, 1]),
              "probabilities": np.array([[0.1, 0.9], [0.2, 0.8], [0.5, 0.5], [0.9, 0.1]])}
    assert agreement(production, shadow) == (3, 4)


def test_every_label_output_must_match_in_a_row():
    production = {"a": np.array([1, 1, 1]), "b": np.array(["x", "y", "z"], dtype=object)}
    shadow = {"a": np.array([1, 0, 1]), "b": np.array(["x", "y", "q"], dtype=object)}
    assert agreement(production, shadow) == (1, 3)


def test_multi_column_labels_agree_only_when_the_whole_row_does():
    production = {"tags": np.array([[True, False], [True, True]])}
    shadow = {"tags": np.array([[True, False], [True, False]])}
    assert agreement(production, shadow) == (1, 2)


def test_float_scores_agree_by_argmax_along_the_last_axis():
    production = {"logits": np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, 5.0, 2.0]],
                                     dtype=np.float32)}
    shadow = {"logits": np.array([[9.0, 1.0, 0.0], [0.0, 4.0, 3.0], [0.0, 5.0, 2.0]],
                                 dtype=np.float32)}
    assert agreement(production, shadow) == (2, 3)


def test_argmax_over_a_3d_output_needs_every_position_to_match():
    production = {"seq": np.array([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])}
    shadow = {"seq": np.array([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])}
    assert agreement(production, shadow) == (1, 2)


def test_regression_values_agree_within_rtol_1e_2_and_atol_1e_6():
    production = {"y": np.array([100.0, 100.0, 0.0, 0.0, np.nan, 1.0])}
    shadow = {"y": np.array([100.9, 101.5, 5e-7, 5e-6, np.nan, np.nan])}
    # |a - b| <= atol + rtol * |b|: 0.9 <= 1.009 yes, 1.5 <= 1.015 no, 5e-7 yes, 5e-6 no,
    # NaN and NaN yes, 1 and NaN no
    assert agreement(production, shadow) == (3, 6)


def test_a_single_column_float_output_is_compared_by_value():
    production = {"score": np.array([[0.5], [0.25]])}
    shadow = {"score": np.array([[0.501], [0.3]])}
    assert agreement(production, shadow) == (1, 2)


def test_every_float_output_must_agree():
    production = {"y": np.array([1.0, 2.0]), "p": np.array([[0.1, 0.9], [0.6, 0.4]])}
    shadow = {"y": np.array([1.0, 2.0]), "p": np.array([[0.2, 0.8], [0.4, 0.6]])}
    assert agreement(production, shadow) == (1, 2)


def test_only_outputs_both_sides_return_are_compared():
    production = {"y": np.array([1.0, 2.0]), "extra": np.array([0, 0])}
    shadow = {"y": np.array([1.0, 3.0])}
    assert agreement(production, shadow) == (1, 2)
    assert agreement({"a": np.array([1])}, {"b": np.array([1])}) == (0, 0)


@pytest.mark.parametrize(
    ("production", "shadow"),
    [
        ({"y": np.array([1.0, 2.0])}, {"y": np.array([1.0, 2.0, 3.0])}),  # row counts differ
        ({"y": np.array(1.0)}, {"y": np.array(1.0)}),  # no row axis
        ({"y": np.array([1.0, 2.0]), "z": np.array([1.0])},
         {"y": np.array([1.0, 2.0]), "z": np.array([1.0])}),  # outputs disagree on rows
        ({"y": np.empty(0)}, {"y": np.empty(0)}),  # no rows
        ({}, {}),
    ],
)
def test_outputs_without_a_common_row_axis_compare_nothing(production, shadow):
    assert agreement(production, shadow) == (0, 0)


def test_an_output_of_another_width_agrees_in_no_row():
    production = {"label": np.array([[1, 2], [3, 4]])}
    shadow = {"label": np.array([[1, 2, 0], [3, 4, 0]])}
    assert agreement(production, shadow) == (0, 2)
