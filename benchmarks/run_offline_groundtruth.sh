#!/usr/bin/env bash
# Compute, or resume, the ground truth of the offline benchmark (benchmarks/offline/spec.yaml):
# every (model, dataset) pair is fine-tuned under the budget in the spec and appended to
# benchmarks/offline/groundtruth.csv as soon as it is done.
#
#   bash benchmarks/run_offline_groundtruth.sh            # JOBS=2 workers (one per core), 1 thread each
#   JOBS=1 bash benchmarks/run_offline_groundtruth.sh     # one process, all threads, progress bars
#   bash benchmarks/run_offline_groundtruth.sh --datasets eurosat --models cifar_resnet20   # a part
#
# Safe to kill at any moment (Ctrl-C, kill, end of a session): pairs already in the CSV are skipped, the pair
# in progress restarts from its last finished epoch (state in .transferkit_cache/finetune/). Workers share the
# table: each takes the next pair that no other worker holds (a lock released when a worker dies). Extra arguments
# go to `transferkit finetune --spec` (e.g. --epochs 1 --out /tmp/gt.csv for a dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
SPEC=benchmarks/offline/spec.yaml
JOBS=${JOBS:-2}

if [ "$JOBS" -le 1 ]; then
  exec transferkit finetune --spec "$SPEC" "$@"
fi

pids=()
stop() {
  echo "stopping (finished epochs are kept; run this script again to resume)"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait || true
  exit 130
}
trap stop INT TERM

start=$(date +%s)
for i in $(seq 0 $((JOBS - 1))); do
  transferkit finetune --spec "$SPEC" --threads 1 --quiet "$@" \
    > >(sed -u "s/^/[worker $i] /") 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
echo "all workers finished in $(( ($(date +%s) - start) / 60 )) min (exit status $status); check:"
transferkit finetune --spec "$SPEC" --quiet "$@" | head -1
exit "$status"
