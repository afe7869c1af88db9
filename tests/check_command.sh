#!/usr/bin/env bash
# Runs a command and checks its exit status and output.
#   check_command.sh STATUS REGEX [--one-line] -- COMMAND ARGS...
# Passes when the command exits with STATUS and its combined output matches the
# extended REGEX; with --one-line, the output must also be exactly one line.
set -u
status=$1 regex=$2
shift 2
one_line=0
if [[ "${1:-}" == "--one-line" ]]; then one_line=1; shift; fi
[[ "${1:-}" == "--" ]] && shift
out=$("$@" 2>&1)
got=$?
fail() { echo "FAIL: $*"; echo "--- output ---"; echo "$out"; exit 1; }
[[ $got -eq $status ]] || fail "exit status $got, expected $status"
echo "$out" | grep -Eq -- "$regex" || fail "output does not match /$regex/"
if ((one_line)) && [[ $(printf '%s\n' "$out" | wc -l) -ne 1 ]]; then fail "expected one line of output"; fi
echo "ok: exit $got, output matches /$regex/"
