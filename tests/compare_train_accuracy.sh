#!/usr/bin/env bash
# Runs tandem-train commands and checks that the test accuracy of each later command,
# read from the final JSON line, is within POINTS percentage points of the first's.
#   compare_train_accuracy.sh POINTS -- COMMAND_A ARGS... -- COMMAND_B ARGS... [-- COMMAND_C ARGS...]
# (The first command runs once however many others it is compared with.)
set -u
points=$1
shift 2
commands=() current=()
for arg in "$@"; do
  if [[ "$arg" == "--" ]]; then
    commands+=("$(printf '%q ' "${current[@]}")")
    current=()
  else
    current+=("$arg")
  fi
done
commands+=("$(printf '%q ' "${current[@]}")")
((${#commands[@]} >= 2)) || { echo "FAIL: expected at least two commands separated by --"; exit 2; }
run() {
  local out
  out=$(eval "$1" 2>/dev/null) || { echo "FAIL: exit status $? from: $1" >&2; return 1; }
  printf '%s\n' "$out" | grep -E '^\{' | tail -n 1 | grep -Eo '"test_acc":[0-9.eE+-]+' | cut -d: -f2
}
start=$SECONDS
base=$(run "${commands[0]}") || exit 1
[[ -n "$base" ]] || { echo "FAIL: no test_acc in the first command's final JSON line"; exit 1; }
echo "A: test_acc $base ($((SECONDS - start)) s): ${commands[0]}"
status=0
for ((i = 1; i < ${#commands[@]}; ++i)); do
  start=$SECONDS
  acc=$(run "${commands[i]}") || exit 1
  [[ -n "$acc" ]] || { echo "FAIL: no test_acc in a final JSON line of: ${commands[i]}"; exit 1; }
  echo "$i: test_acc $acc ($((SECONDS - start)) s): ${commands[i]}"
  awk -v x="$base" -v y="$acc" -v p="$points" 'BEGIN {
    d = (x - y) * 100; if (d < 0) d = -d;
    printf "   difference %.2f points (at most %s)\n", d, p; exit !(d <= p) }' || { echo "FAIL: accuracies differ too much"; status=1; }
done
((status == 0)) && echo "ok"
exit $status
