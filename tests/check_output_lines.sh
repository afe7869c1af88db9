#!/usr/bin/env bash
# Runs a command and checks its exit status and how many lines of its output match.
#   check_output_lines.sh STATUS [COUNT REGEX]... -- COMMAND ARGS...
# Passes when the command exits with STATUS and, for each pair, exactly COUNT lines
# of its combined stdout and stderr match the extended REGEX.
set -u
status=$1
shift
counts=() regexes=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
  counts+=("$1") regexes+=("$2")
  shift 2
done
shift
out=$("$@" 2>&1)
got=$?
fail() { echo "FAIL: $*"; echo "--- output ---"; echo "$out"; exit 1; }
[[ $got -eq $status ]] || fail "exit status $got, expected $status"
for i in "${!counts[@]}"; do
  n=$(printf '%s\n' "$out" | grep -Ec -- "${regexes[$i]}")
  [[ $n -eq ${counts[$i]} ]] || fail "$n lines match /${regexes[$i]}/, expected ${counts[$i]}"
done
echo "ok: exit $got, line counts as expected"
