#!/usr/bin/env bash
# Training throughput of ferrite's trainer (burn 0.22, flex backend) against PyTorch CPU on the
# shipped models' architectures, batch, context and thread count, run side by side in one run.
# Prints a markdown table for BENCHMARKS.md. Needs models/corpus (models/fetch-corpus.sh) and the
# dev venv with torch + transformers (.venv-dev, see scripts/make_goldens.py).
#
#   bash scripts/bench-train-peers.sh [STEPS] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-30}"
threads="${2:-1}"
py="${PYTHON_DEV:-.venv-dev/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo build --release --features ort --quiet
ferrite=target/release/ferrite

median_tok_s() { # train_log.jsonl -> median tokens_per_s of the logged intervals after the first
  "$py" -c 'import json,statistics,sys; r=[json.loads(l)["tokens_per_s"] for l in open(sys.argv[1])][1:]; print(statistics.median(r))' "$1"
}

echo "| model | batch × context | threads | ferrite tokens/s | PyTorch tokens/s | ferrite / PyTorch |"
echo "|---|---|---|---|---|---|"
run() { # name vocab-source ferrite-args -- torch-args
  local name="$1" vocab="$2"; shift 2
  local fargs=() targs=()
  while [ "$1" != "--" ]; do fargs+=("$1"); shift; done; shift
  targs=("$@")
  RAYON_NUM_THREADS="$threads" "$ferrite" train "${fargs[@]}" --corpus models/corpus --out "$work/$name" \
    --steps "$steps" --val-every 100000 --checkpoint-every 100000 >/dev/null 2>&1
  local f; f="$(median_tok_s "$work/$name/train_log.jsonl")"
  local t; t="$("$py" scripts/bench_train_torch.py "${targs[@]}" --vocab "$vocab" --threads "$threads" --steps "$steps" \
    | "$py" -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_s"])')"
  "$py" -c 'import sys; n,b,th,f,t=sys.argv[1:]; f=float(f); t=float(t); print(f"| {n} | {b} | {th} | {f:,.0f} | {t:,.0f} | {f/t:.2f} |")' \
    "$name" "${batch_ctx}" "$threads" "$f" "$t"
}
vocab_of() { "$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$1"; }

batch_ctx="64 × 128"
run "lstm 2×384 (char, shipped)" "$(vocab_of models/shakespeare-lstm/config.json)" \
  --arch lstm --tokenizer char --batch 64 --context 128 --layers 2 --embed 64 --hidden 384 -- \
  --arch lstm --batch 64 --context 128 --layers 2 --embed 64 --hidden 384
batch_ctx="32 × 128"
run "lstm 2×256 (char)" "$(vocab_of models/shakespeare-lstm/config.json)" \
  --arch lstm --tokenizer char --batch 32 --context 128 --layers 2 --embed 64 --hidden 256 -- \
  --arch lstm --batch 32 --context 128 --layers 2 --embed 64 --hidden 256
batch_ctx="8 × 256"
run "gpt2 4×128 (bpe 4096)" "$(vocab_of models/shakespeare-gpt/config.json)" \
  --arch gpt2 --tokenizer bpe:4096 --batch 8 --context 256 --layers 4 --d-model 128 --heads 4 -- \
  --arch gpt2 --batch 8 --context 256 --layers 4 --d-model 128 --heads 4
