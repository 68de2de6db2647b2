"""Generate the Python code of the contract: protos/ -> client/cachegate/v1/.

One command produces every generated file (`make protos`); `--check` regenerates
into a scratch folder and fails when the committed files differ, so CI catches a
.proto edited without regenerating (the temporalio/sdk-python habit).

Beside the code it writes DESCRIPTOR_SET: the same files as a FileDescriptorSet
*with* source info (the .proto's comments). The generated _pb2 modules embed their
descriptors without comments, so server reflection serves this set instead and
`grpcurl describe` shows the documentation; `--check` compares it like the code.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "client"
PACKAGE_DIR = Path("cachegate") / "v1"
# Files in the package folder that are ours, not protoc's.
HAND_WRITTEN = {"__init__.py", "py.typed"}
# Read by cachegate.rpc._reflection (through importlib.resources).
DESCRIPTOR_SET = "cachegate.binpb"


def generate(out_root: Path) -> list[Path]:
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    # protoc makes the folders of the code it writes, not the one of the descriptor set.
    (out_root / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        # mypy-protobuf types the gRPC stubs, which protoc's own pyi_out does not.
        f"--plugin=protoc-gen-mypy_grpc={Path(sys.executable).parent / 'protoc-gen-mypy_grpc'}",
        f"--mypy_grpc_out={out_root}",
        f"--descriptor_set_out={out_root / PACKAGE_DIR / DESCRIPTOR_SET}",
        "--include_source_info",
        *(str(p) for p in protos),
    ]
    subprocess.run(cmd, check=True)
    return sorted(p for p in (out_root / PACKAGE_DIR).iterdir() if p.name not in HAND_WRITTEN)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="fail if regenerating changes anything"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        fresh = generate(Path(scratch))
        target = OUT_ROOT / PACKAGE_DIR
        names = {p.name for p in fresh}
        committed = {p.name for p in target.glob("*_pb2*")} | {
            p.name for p in target.glob(DESCRIPTOR_SET)
        }
        if args.check:
            stale = sorted(
                name
                for name in names | committed
                if name not in names
                or name not in committed
                or not filecmp.cmp(Path(scratch) / PACKAGE_DIR / name, target / name, shallow=False)
            )
            if stale:
                print(
                    f"generated code is stale, run `make protos`: {', '.join(stale)}",
                    file=sys.stderr,
                )
                return 1
            print(f"generated code is up to date ({len(names)} files)")
            return 0
        target.mkdir(parents=True, exist_ok=True)
        for name in committed - names:
            (target / name).unlink()
        for path in fresh:
            shutil.copyfile(path, target / path.name)
        print(f"wrote {len(fresh)} files to {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
