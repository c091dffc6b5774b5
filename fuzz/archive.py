"""The findings archive both engines write: one program JSON per signature, named by a short
hash of the signature, never overwritten; and each campaign's model-state coverage table."""

from __future__ import annotations

import glob
import hashlib
import os
from datetime import UTC, datetime

from harness.program import ProgramError, load_program_file


def finding_path(directory: str, signature: str) -> str:
    """Where a finding is archived: a short hash of its signature."""
    digest = hashlib.sha256(signature.encode()).hexdigest()[:12]
    return os.path.join(directory, f"{digest}.json")


def archive(directory: str, signature: str, text: str) -> tuple[str, bool]:
    """Write a finding's program unless a file of its signature exists: (path, written)."""
    path = finding_path(directory, signature)
    try:
        with open(path, "x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        return path, False
    return path, True


def archived_signatures(directory: str) -> dict[str, str]:
    """signature -> file of every program in ``directory`` whose meta has one."""
    out: dict[str, str] = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        try:
            sig = load_program_file(path).meta.get("signature")
        except ProgramError:
            continue
        if isinstance(sig, str):
            out.setdefault(sig, path)
    return out


def write_coverage(directory: str, engine: str, seed: int, text: str) -> str:
    """Write a campaign's model-state coverage table next to its findings, as
    ``coverage-<UTC time>-<engine>-seed<seed>.txt`` (a name no program file has, so the
    corpus tools pass it by); written to a temporary name and renamed, so the file is
    whole or absent.  Returns its path."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(directory, f"coverage-{stamp}-{engine}-seed{seed}.txt")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path
