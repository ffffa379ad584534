"""Fails when an `unsafe` block or `unsafe impl` in the workspace has no `// SAFETY:` comment.

A block counts as commented when `SAFETY` appears on its line or in a comment above it within the
same statement (up to 8 lines; a comment above a `match` covers a block in each arm). `unsafe fn` / `unsafe extern "C" fn` declarations are not blocks: their contract is
their `# Safety` doc section (clippy's `missing_safety_doc`). Run: python3 scripts/check_safety_comments.py
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = ("target", ".venv", ".deps", ".git", "node_modules")
BLOCK = re.compile(r"\bunsafe\s*\{|\bunsafe\s+impl\b")


def files():
    for p in ROOT.rglob("*.rs"):
        rel = p.relative_to(ROOT)
        if any(part.startswith(SKIP) for part in rel.parts):
            continue
        yield p


def commented(lines, i):
    """SAFETY on the line, or in a comment above it within the same statement (a shared comment
    above a `match` whose arms each hold a block counts for every arm)."""
    if "SAFETY" in lines[i]:
        return True
    for j in range(i - 1, max(-1, i - 9), -1):
        s = lines[j].strip()
        if s.startswith("//"):
            if "SAFETY" in s:
                return True
            continue
        if not s or s.endswith((";", "}")):
            return False
    return False


def main():
    missing, total = [], 0
    for p in sorted(files()):
        lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
        for i, line in enumerate(lines):
            code = line.split("//", 1)[0]
            if BLOCK.search(code):
                total += 1
                if not commented(lines, i):
                    missing.append(f"{p.relative_to(ROOT)}:{i + 1}: {line.strip()}")
    print(f"{total} unsafe blocks/impls, {len(missing)} without a SAFETY comment")
    for m in missing:
        print("  " + m)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
