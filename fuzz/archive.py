"""The findings archive both engines write: one program JSON per signature, named by a short
hash of the signature, never overwritten."""

from __future__ import annotations

import glob
import hashlib
import os

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
