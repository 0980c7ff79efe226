#!/usr/bin/env bash
# Every test tier, in two lanes at once: the end-to-end and fault tiers (real
# farm processes that mostly wait on their renders) beside the unit and
# integration tiers (in-process, CPU-bound). Run one after another they take
# over 40 minutes on a 2-core machine; side by side, about the longer lane.
#
# Each lane is its own pytest process with its own throwaway databases, Redis
# namespaces and ports, so they share nothing but the services. Lines are
# prefixed with their lane as they come; a lane's summary is printed again at
# the end. The exit status is the first failing lane's, or 0.
#
#   scripts/run-tests.sh [extra pytest arguments, given to both lanes]
set -u
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
logs=$(mktemp -d)
pids=()

stop_lanes() {
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
  exit 130
}
trap stop_lanes INT TERM

# A lane runs in a process group of its own (setsid), so stopping the run
# stops each lane's pytest and whatever it started.
run_lane() {
  local name=$1
  shift
  setsid bash -c 'set -o pipefail; "$@" 2>&1 | tee "$0" | sed -u "s/^/['"$name"'] /"' \
    "$logs/$name.log" "$python" -m pytest -q -p no:cacheprovider "$@" &
  pids+=($!)
}

run_lane e2e tests/e2e tests/faults "$@"
run_lane unit tests/unit tests/integration "$@"

status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"
  rc=$?
  [ "$status" -eq 0 ] && status=$rc
done

# A lane's failures scroll far up in a long run; the names of the failed
# tests are repeated here, where the tail of a CI log shows them.
for name in unit e2e; do
  grep -E '^(FAILED|ERROR) ' "$logs/$name.log" | sed "s/^/== $name lane: /"
  echo "== $name lane: $(tail -n 1 "$logs/$name.log")"
done
rm -rf "$logs"
exit "$status"
