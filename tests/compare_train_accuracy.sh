#!/usr/bin/env bash
# Runs two tandem-train commands and checks that their test accuracies, read from the
# final JSON line of each, differ by at most POINTS percentage points.
#   compare_train_accuracy.sh POINTS -- COMMAND_A ARGS... -- COMMAND_B ARGS...
set -u
points=$1
shift 2
a=() b=()
while [[ $# -gt 0 && "$1" != "--" ]]; do a+=("$1"); shift; done
shift
b=("$@")
run() {
  local out
  out=$("$@" 2>/dev/null) || { echo "FAIL: exit status $? from: $*" >&2; return 1; }
  printf '%s\n' "$out" | grep -E '^\{' | tail -n 1 | grep -Eo '"test_acc":[0-9.eE+-]+' | cut -d: -f2
}
start=$SECONDS
acc_a=$(run "${a[@]}") || exit 1
mid=$SECONDS
acc_b=$(run "${b[@]}") || exit 1
[[ -n "$acc_a" && -n "$acc_b" ]] || { echo "FAIL: no test_acc in a final JSON line (got '$acc_a', '$acc_b')"; exit 1; }
echo "A: test_acc $acc_a ($((mid - start)) s): ${a[*]}"
echo "B: test_acc $acc_b ($((SECONDS - mid)) s): ${b[*]}"
awk -v x="$acc_a" -v y="$acc_b" -v p="$points" 'BEGIN {
  d = (x - y) * 100; if (d < 0) d = -d;
  printf "difference %.2f points (at most %s)\n", d, p; exit !(d <= p) }' || { echo "FAIL: accuracies differ too much"; exit 1; }
echo "ok"
