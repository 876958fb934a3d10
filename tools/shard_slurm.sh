#!/usr/bin/env bash
# Shard one video collection on a SLURM array: every array task runs one part of
# `siammae shard` (shard u goes to part u mod N: the parts are disjoint and together are the
# one-machine run's shards, byte for byte). All tasks write into the same OUT (a shared file system);
# shard names are unit numbers, so they never collide. A task that was killed or preempted can
# simply be resubmitted: it resumes.
#
#   sbatch --array=0-31 tools/shard_slurm.sh SRC OUT [extra siammae shard options...]
#
# Every task must get the same options (they decide the samples). Each task rewrites
# OUT/failed.jsonl and OUT/stats.json from all parts' records when it ends; to refresh them after
# the last task, rerun any one part (it finds nothing to do and only merges).
#
#SBATCH --job-name=siammae-shard
#SBATCH --cpus-per-task=16
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --output=slurm-shard-%A_%a.out

set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: sbatch --array=0-N tools/shard_slurm.sh SRC OUT [siammae shard options]" >&2
    exit 2
fi
SRC=$1
OUT=$2
shift 2
: "${SLURM_ARRAY_TASK_ID:?run me as an array job: sbatch --array=0-N $0 ...}"
: "${SLURM_ARRAY_TASK_COUNT:?run me as an array job: sbatch --array=0-N $0 ...}"
# Arrays must start at 0 and be contiguous (--array=0-31), or parts would be skipped.
if [ -n "${SLURM_ARRAY_TASK_MIN:-}" ] && [ "${SLURM_ARRAY_TASK_MIN}" != 0 ]; then
    echo "array indices must start at 0 (got --array=${SLURM_ARRAY_TASK_MIN}-...)" >&2
    exit 2
fi

HERE=$(cd "$(dirname "$0")" && pwd)
exec python "$HERE/shard" --src "$SRC" --out "$OUT" \
    --part "$SLURM_ARRAY_TASK_ID" --num-parts "$SLURM_ARRAY_TASK_COUNT" \
    --workers "${SLURM_CPUS_PER_TASK:-$(nproc)}" --no-progress "$@"
