#!/bin/sh
# Compares a C example's output with the ferrite CLI's.
#
#   compare.sh generate CLI_JSON C_JSON   `ferrite generate --json` minus its timing fields must
#                                         equal the C program's line byte for byte
#   compare.sh embed CLI_JSON C_JSON TOL  the same numbers in the same order, each within TOL
set -eu
mode=$1 expected=$2 actual=$3
case $mode in
generate)
    # The CLI's keys are sorted; the timing fields come last and are the only ones dropped.
    sed -e 's/,"time_to_first_token_ms":.*}$/}/' "$expected" > "$expected.cmp"
    if ! cmp -s "$expected.cmp" "$actual"; then
        echo "compare: $actual differs from the CLI:" >&2
        echo "  CLI: $(cat "$expected.cmp")" >&2
        echo "  C:   $(cat "$actual")" >&2
        exit 1
    fi
    ;;
embed)
    tol=$4
    tr -s '[],:{}" ' '\n\n\n\n\n\n\n\n' < "$expected" | grep -v -e '^$' -e embeddings > "$expected.nums"
    tr -s '[],:{}" ' '\n\n\n\n\n\n\n\n' < "$actual" | grep -v -e '^$' -e embeddings > "$actual.nums"
    a=$(wc -l < "$expected.nums") b=$(wc -l < "$actual.nums")
    if [ "$a" -ne "$b" ] || [ "$a" -eq 0 ]; then
        echo "compare: $actual has $b numbers, the CLI printed $a" >&2
        exit 1
    fi
    paste "$expected.nums" "$actual.nums" | awk -v tol="$tol" '
        { d = $1 - $2; if (d < 0) d = -d; if (d > max) max = d }
        END { printf "compare: %d numbers, max abs difference %g (tolerance %g)\n", NR, max, tol; exit !(max <= tol) }'
    ;;
*)
    echo "usage: compare.sh generate|embed EXPECTED ACTUAL [TOL]" >&2
    exit 2
    ;;
esac
