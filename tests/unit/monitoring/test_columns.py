"""The column naming rule: tensors <-> 1-D columns, checks of batches against a layout."""

from __future__ import annotations

import numpy as np
import pytest

from monitoring.columns import ColumnLayout, TensorColumns, layout_for, tensor_columns


def test_one_dimensional_tensor_is_one_column() -> None:
    assert tensor_columns("label", (-1,)) == TensorColumns("label", 1, ("label",))
    assert tensor_columns("label", (-1,)).width is None


def test_feature_names_name_the_only_input_when_the_width_matches() -> None:
    layout = layout_for(
        [("input", (-1, 3))],
        [("label", (-1,)), ("probabilities", (-1, 2))],
        feature_names=["a", "b", "c"],
    )
    assert layout.feature_columns == ("a", "b", "c")
    assert layout.output_columns == ("label", "probabilities_0", "probabilities_1")


def test_generic_names_otherwise() -> None:
    wrong_count = layout_for([("x", (-1, 2))], [], feature_names=["a", "b", "c"])
    assert wrong_count.feature_columns == ("x_0", "x_1")
    two_inputs = layout_for([("x", (-1, 2)), ("y", (-1,))], [], feature_names=["a", "b"])
    assert two_inputs.feature_columns == ("x_0", "x_1", "y")


def test_dynamic_width_is_resolved_from_the_data_or_left_open() -> None:
    assert tensor_columns("x", (-1, -1), width=2).columns == ("x_0", "x_1")
    open_width = tensor_columns("x", (-1, -1))
    assert open_width.columns == () and open_width.width is None
    assert open_width.mismatch(np.zeros((4, 7))) is None  # any width fits
    with pytest.raises(ValueError, match="declared 3 wide, data is 2 wide"):
        tensor_columns("x", (-1, 3), width=2)


def test_more_than_two_dimensions_have_no_columns() -> None:
    with pytest.raises(ValueError, match="3 dimensions"):
        tensor_columns("image", (-1, 28, 28))


def test_duplicate_column_names_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\['x_0'\]"):
        layout_for([("x", (-1, 2)), ("x_0", (-1,))], [])


def test_batch_mismatches_say_why() -> None:
    layout = layout_for([("x", (-1, 2))], [("y", (-1,))])
    x, y = np.zeros((3, 2)), np.zeros(3)
    assert layout.mismatch({"x": x}, {"y": y}) is None
    assert layout.mismatch({"z": x}, {"y": y}) == "inputs ['z'] differ from the expected ['x']"
    assert layout.mismatch({"x": x}, {}) == "outputs [] differ from the expected ['y']"
    assert layout.mismatch({"x": np.zeros((3, 5))}, {"y": y}) == (
        "tensor 'x' has width 5, expected 2"
    )
    assert layout.mismatch({"x": np.zeros(3)}, {"y": y}) == (
        "tensor 'x' has shape [3], expected 2-D"
    )
    assert layout.mismatch({"x": x}, {"y": np.zeros(4)}) == (
        "tensors disagree on the number of rows: [3, 4]"
    )


def test_split_and_join_are_inverse() -> None:
    layout = layout_for([("x", (-1, 2))], [("y", (-1,))], feature_names=["a", "b"])
    x = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    columns = layout.split({"x": x}, {"y": np.array([7, 8])})
    assert {k: v.tolist() for k, v in columns.items()} == {
        "a": [1.0, 3.0], "b": [2.0, 4.0], "y": [7, 8]
    }
    np.testing.assert_array_equal(layout.inputs[0].join(columns), x)


def test_layout_survives_json() -> None:
    layout = layout_for([("x", (-1, 2))], [("y", (-1,))])
    assert ColumnLayout.from_dict(layout.to_dict()) == layout
