"""Rewrite a wheel without the native libraries a machine will not load, so it fits the carry limit.

    python benchmarks/slim_wheel.py WHEEL --keep 'libbitsandbytes_cpu.so' --keep 'libbitsandbytes_cuda130.so' \
        --drop-pattern 'libbitsandbytes_*.so'

bitsandbytes ships one kernel library per CUDA/ROCm/XPU version (41 MiB compressed in all); it loads the one
matching ``torch.version.cuda``. Files matching ``--drop-pattern`` are removed unless named by ``--keep``;
RECORD is rewritten with the hashes of what is left (the format of PEP 376/427), so pip installs it as usual.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import zipfile
from pathlib import Path


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def slim(path: Path, drop: list[str], keep: list[str]) -> list[str]:
    """Rewrite ``path`` in place; return the names removed."""
    with zipfile.ZipFile(path) as source:
        infos = source.infolist()
        contents = {info.filename: source.read(info) for info in infos}
    record = next(name for name in contents if name.endswith(".dist-info/RECORD"))
    removed = [name for name in contents if any(fnmatch.fnmatch(Path(name).name, p) for p in drop)
               and Path(name).name not in keep]
    lines = [record_line(name, data) for name, data in contents.items() if name != record and name not in removed]
    contents[record] = ("\n".join([*lines, f"{record},,"]) + "\n").encode()
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for info in infos:
            if info.filename not in removed:
                target.writestr(info, contents[info.filename], compress_type=zipfile.ZIP_DEFLATED)
    tmp.replace(path)
    return removed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--drop-pattern", action="append", required=True)
    parser.add_argument("--keep", action="append", default=[])
    args = parser.parse_args()
    removed = slim(args.wheel, args.drop_pattern, args.keep)
    print(f"{args.wheel.name}: removed {len(removed)} files; {args.wheel.stat().st_size / 2**20:.1f} MiB left")


if __name__ == "__main__":
    main()
