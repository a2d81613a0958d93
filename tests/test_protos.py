"""The committed generated code matches proto/, and the public protos follow the conventions."""

from __future__ import annotations

import filecmp
import re
from pathlib import Path

import pytest

from pagedserve.common.protogen import PROTO_ROOT, REPO_ROOT, generate, proto_files


def test_generated_code_is_up_to_date(tmp_path):
    generate(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc generated nothing"
    stale = [
        str(p) for p in generated if not filecmp.cmp(tmp_path / p, REPO_ROOT / p, shallow=False)
    ]
    assert not stale, f"run `make proto`: {stale}"


def _blocks(text: str, keyword: str):
    for match in re.finditer(rf"^{keyword} (\w+) \{{(.*?)^\}}", text, re.S | re.M):
        yield match.group(1), match.group(2)


@pytest.mark.parametrize("proto", proto_files(), ids=lambda p: str(p.relative_to(PROTO_ROOT)))
def test_proto_conventions(proto: Path):
    text = proto.read_text()
    package = re.search(r"^package ([\w.]+);", text, re.M).group(1)
    assert re.search(r"\.v\d+$", package), f"package {package} is not versioned"
    for name, body in _blocks(text, "enum"):
        first = re.search(r"^\s*(\w+) = 0;", body, re.M)
        assert first and first.group(1).endswith("_UNSPECIFIED"), (
            f"enum {name}: zero value must be *_UNSPECIFIED"
        )
    rpcs = re.findall(r"rpc (\w+)\((?:stream )?(\w+)\) returns \((?:stream )?(\w+)\)", text)
    # Generate and GenerateStream take the same GenerateRequest: the public API fixes
    # it so (a client switches between them without rebuilding the request).
    requests = [r[1] for r in rpcs if r[0] != "GenerateStream"]
    assert len(requests) == len(set(requests)), "each RPC has its own request message"
    if package == "pagedserve.v1":
        for rpc, request, response in rpcs:
            assert request.endswith("Request") and response.endswith("Response"), rpc
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^\s+(optional |repeated )?[\w.]+ \w+ = \d+;", line):
            previous = lines[number - 1].strip()
            assert previous.startswith("//"), (
                f"{proto.name}:{number + 1} field without a comment: {line.strip()}"
            )
