"""``pudthp export-c PROGRAM [-o FILE] [--kselftest-tree DIR]``: any finding made a kernel
reproducer (``harness.conform.export_c`` writes the C file).

- A program at a smaller geometry (the fuzzers' P = 4 or 8) is lifted to x86_64 first
  (``harness.rescale.lift``, as ``pudthp rescale --geometry x86_64``); the finding its
  meta names is kept where the lifted program still shows it, and the user is told when
  it does not (the C file then checks what the model predicts for the lifted program).
- A program on which the reference model itself fails (a model finding: a broken
  invariant of a design the kernel does not have, a model bug) has no expectation at
  and after that op: the ops before it are exported, said so.
- ``--kselftest-tree DIR`` (a kernel source tree, or its ``tools/testing/selftests/mm``)
  writes the test there as ``pudthp_NAME.c``, built with that directory's ``kselftest.h``
  and THP settings header (``thp_settings.h``, ``hugepage_settings.h`` in trees that
  renamed it), and adds ``TEST_GEN_PROGS += pudthp_NAME`` to its Makefile, so ``make -C
  tools/testing/selftests/mm`` builds it with the others.
"""

from __future__ import annotations

import os
import re
import sys

from harness.conform.compare import raw_config_keys
from harness.conform.export_c import (
    ExportError,
    ModelStops,
    Reproducer,
    build,
    render_c,
    resolve,
)
from harness.program import ProgramError, load_program_file
from harness.rescale import lift
from pudthp_ref import spec
from pudthp_ref.spec import Program

MM_DIR = os.path.join("tools", "testing", "selftests", "mm")
SETTINGS_HEADERS = ("thp_settings.h", "hugepage_settings.h")


def exported(path: str) -> tuple[Reproducer, str]:
    """The reproducer of the program as exported (lifted, cut before a model failure) and
    the notes for the user; raises ProgramError or ExportError."""
    program = load_program_file(path)
    explicit = raw_config_keys(path)
    notes: list[str] = []
    if "geometry" in explicit and program.config.geometry != spec.GEOMETRIES["x86_64"]:
        lifted = lift(program, "x86_64")
        notes.append(f"lifted from P={program.config.geometry} to x86_64"
                     + (f": {lifted.note}" if lifted.note else ""))
        program = lifted.program
        explicit = {k: v for k, v in explicit.items() if k != "geometry"}
    program, pud = resolve(program, explicit)
    name = os.path.basename(path)
    try:
        rep = build(program, pud, name)
    except ModelStops as e:
        if e.op_index == 0:
            raise
        notes.append(f"{e}; exported: the {e.op_index} op(s) before it")
        rep = build(Program(program.config, program.ops[: e.op_index],
                            {**program.meta, "exported_ops": e.op_index}), pud, name)
    return rep, "\n".join(notes)


def settings_header(mm_dir: str) -> str | None:
    for name in SETTINGS_HEADERS:
        if os.path.exists(os.path.join(mm_dir, name)):
            return name
    return None


def mm_selftests(tree: str) -> str:
    """The ``tools/testing/selftests/mm`` directory of ``tree`` (or ``tree`` itself)."""
    for cand in (os.path.join(tree, MM_DIR), tree):
        if (os.path.isfile(os.path.join(cand, "Makefile"))
                and os.path.isfile(os.path.join(cand, "..", "kselftest.h"))
                and settings_header(cand) is not None):
            return cand
    raise ExportError(f"--kselftest-tree {tree}: no {MM_DIR} with a Makefile, ../kselftest.h "
                      f"and {' or '.join(SETTINGS_HEADERS)} there")


def test_name(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return "pudthp_" + (re.sub(r"[^A-Za-z0-9_]", "_", stem) or "program")


def add_to_makefile(makefile: str, name: str) -> bool:
    """``TEST_GEN_PROGS += name`` after the Makefile's last such line (or at its end);
    False when it is there already."""
    with open(makefile, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    line = f"TEST_GEN_PROGS += {name}\n"
    if any(x.split() == line.split() for x in lines):
        return False
    last = max((i for i, x in enumerate(lines) if x.startswith("TEST_GEN_PROGS")),
               default=len(lines) - 1)
    lines.insert(last + 1, line)
    tmp = makefile + ".pudthp.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(tmp, makefile)
    return True


def cmd_export_c(path: str, out: str | None, kselftest_tree: str | None = None) -> int:
    """Exit 0 written, 2 bad input or a program the live kernel cannot express."""
    try:
        mm_dir = mm_selftests(kselftest_tree) if kselftest_tree is not None else None
        rep, notes = exported(path)
        header = settings_header(mm_dir) if mm_dir is not None else None
        text = render_c(rep, header)
        program = rep.program
    except (ProgramError, ExportError) as e:
        return _error(str(e) if isinstance(e, ProgramError) else f"{path}: {e}")
    for note in notes.splitlines():
        print(f"pudthp export-c: {path}: {note}", file=sys.stderr)
    if mm_dir is not None:
        return _write_tree(path, mm_dir, text, len(program.ops))
    if out is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        return _error(f"-o {out}: {e.strerror or e}")
    print(f"pudthp export-c: {path}: {len(program.ops)} ops -> {out} "
          f"(build: gcc -O2 -Wall -o {_binary_name(out)} {out})")
    return 0


def _write_tree(path: str, mm_dir: str, text: str, nops: int) -> int:
    name = test_name(path)
    c_path = os.path.join(mm_dir, name + ".c")
    try:
        with open(c_path, "w", encoding="utf-8") as f:
            f.write(text)
        added = add_to_makefile(os.path.join(mm_dir, "Makefile"), name)
    except OSError as e:
        return _error(f"--kselftest-tree: {e.filename or mm_dir}: {e.strerror or e}")
    print(f"pudthp export-c: {path}: {nops} ops -> {c_path}"
          + (f", 'TEST_GEN_PROGS += {name}' added to" if added else ", already in")
          + f" {os.path.join(mm_dir, 'Makefile')} (build: make -C {mm_dir})")
    return 0


def _binary_name(c_path: str) -> str:
    base = os.path.basename(c_path)
    return base[:-2] if base.endswith(".c") and len(base) > 2 else "repro"


def _error(message: str) -> int:
    print(f"pudthp: error: {' '.join(message.split())}", file=sys.stderr)
    return 2
