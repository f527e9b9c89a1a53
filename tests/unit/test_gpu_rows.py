"""load_tests/gpu_rows.py on a host without CUDA: its arguments, and its clear refusal (exit 2)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from load_tests import gpu_rows


def test_defaults() -> None:
    args = gpu_rows.parse_args([])
    assert args.batch_sizes == (1, 16, 64, 256, 1024, 4096)
    assert (args.seconds, args.device, args.cpu_threads) == (3.0, 0, 0)
    assert args.model == Path("models/mlp/1/model.onnx")
    assert args.out == Path("load_tests/results/gpu_rows.json")


def test_batch_sizes_parse() -> None:
    assert gpu_rows.parse_args(["--batch-sizes", "8, 512,"]).batch_sizes == (8, 512)


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--batch-sizes", "0,4"], "batch sizes are 1 to 1,000,000"),
        (["--batch-sizes", "four"], "not a list of integers"),
        (["--batch-sizes", ""], "batch sizes are 1 to 1,000,000"),
        (["--seconds", "0"], "seconds must be in (0, 600]"),
        (["--device", "-1"], "invalid choice"),
    ],
)
def test_bad_arguments_are_refused(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        gpu_rows.parse_args(argv)
    assert info.value.code == 2
    assert complaint in capsys.readouterr().err


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this host has CUDA"
)
def test_without_cuda_it_says_so_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gpu_rows.json"
    assert gpu_rows.main(["--seconds", "0.1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpu_rows: onnxruntime here has no CUDA provider")
    assert "onnxruntime-gpu" in err
    assert not out.exists()
