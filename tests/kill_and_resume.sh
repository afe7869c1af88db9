#!/usr/bin/env bash
# A run killed with SIGKILL in the middle of training, then rerun with --resume auto,
# must end with exactly the final JSON metrics of an uninterrupted run.
#   kill_and_resume.sh WORKDIR KILL_AT_STEP -- TANDEM_TRAIN ARGS...
# The run gets --checkpoint-dir WORKDIR/ckpt (the uninterrupted one a directory of its
# own, so both save alike); it is killed once a checkpoint of step KILL_AT_STEP or
# later exists (so the kill lands between checkpoints, mid-epoch), and
# the final JSON lines are compared without the fields that legitimately differ
# (throughput, the resume marker).
set -u
work=$1 kill_at=$2
shift 3
cmd=("$@")
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*"; exit 1; }
final_json() { grep -E '^\{' "$1" | tail -n 1 | sed -E 's/,"resumed_from":"[^"]*"//; s/,"train_samples_per_s":[^,}]*//'; }

"${cmd[@]}" --checkpoint-dir "$work/straight-ckpt" >"$work/straight.out" 2>"$work/straight.err" || fail "uninterrupted run failed: $(tail -n 3 "$work/straight.err")"

# The run to kill, in its own process group so its workers die with it.
setsid "${cmd[@]}" --checkpoint-dir "$work/ckpt" >"$work/killed.out" 2>"$work/killed.err" &
pid=$!
deadline=$((SECONDS + 600))
killed=0
while kill -0 "$pid" 2>/dev/null; do
  newest=$(ls "$work/ckpt" 2>/dev/null | sed -nE 's/^ckpt-([0-9]+)\.tck$/\1/p' | sort -n | tail -n 1)
  if [[ -n "$newest" && "$newest" -ge "$kill_at" ]]; then
    kill -KILL -- -"$pid" 2>/dev/null || kill -KILL "$pid"
    killed=1
    break
  fi
  ((SECONDS < deadline)) || { kill -KILL -- -"$pid"; fail "no checkpoint of step >= $kill_at within 600 s"; }
  sleep 0.05
done
wait "$pid" 2>/dev/null
((killed)) || fail "the run ended before a checkpoint of step $kill_at appeared; lower KILL_AT_STEP"
grep -qE '^\{' "$work/killed.out" && fail "the killed run printed its final line: it was not killed mid-run"
echo "killed after checkpoint step $newest"

"${cmd[@]}" --checkpoint-dir "$work/ckpt" --resume auto >"$work/resumed.out" 2>"$work/resumed.err" ||
  fail "resumed run failed: $(tail -n 3 "$work/resumed.err")"
grep -qE '"resumed_from":"[^"]*ckpt-[0-9]+\.tck"' "$work/resumed.out" || fail "the rerun did not resume from a checkpoint"
a=$(final_json "$work/straight.out")
b=$(final_json "$work/resumed.out")
[[ -n "$a" && "$a" == "$b" ]] || fail "final metrics differ:
  uninterrupted: $a
  resumed:       $b"
echo "identical final metrics: $b"
echo ok
