"""Regenerates the committed *_pb2.py / *_pb2_grpc.py files from proto/.

Run as `python -m pagedserve.common.protogen` (or `make proto`). The generated
files are committed so that installing pagedserve needs no protoc; a test
checks that they match the .proto files.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Writes generated modules for every .proto under proto/ into out_dir."""
    from grpc_tools import protoc  # dev dependency, imported only here

    for proto in proto_files():
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(proto.relative_to(PROTO_ROOT)),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")


def main() -> int:
    generate(REPO_ROOT)
    for proto in proto_files():
        print(f"generated {proto.relative_to(PROTO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
