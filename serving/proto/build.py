"""Regenerate open_inference.binpb, the compiled descriptor of open_inference.proto, with
grpcio-tools (a dev dependency): `python -m serving.proto.build`. tests/unit/test_grpc_proto.py
fails when the committed file differs from what this writes."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "open_inference.proto"
COMPILED = HERE / "open_inference.binpb"


def compile_proto(out: Path) -> None:
    """protoc (grpcio-tools') compiles the proto into a FileDescriptorSet at `out`."""
    from grpc_tools import protoc

    code = protoc.main(["protoc", f"-I{HERE}", f"--descriptor_set_out={out}", PROTO.name])
    if code != 0:
        raise RuntimeError(f"protoc failed on {PROTO} (exit {code})")


def compiled_now() -> bytes:
    """What compiling the proto gives today."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / COMPILED.name
        compile_proto(out)
        return out.read_bytes()


def main() -> int:
    COMPILED.write_bytes(compiled_now())
    print(f"wrote {COMPILED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
