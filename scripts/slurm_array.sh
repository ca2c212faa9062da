#!/usr/bin/env bash
# One Slurm array task = one shard of a sweep. From the repository root (after `make install`):
#   sbatch --array=0-15 scripts/slurm_array.sh configs/paper.toml results/paper
# Shards are disjoint and cover the grid; a requeued or resubmitted task skips what is recorded and
# resumes its interrupted run from its checkpoint. Afterwards: nerepro collect --results results/paper
#SBATCH --job-name=nerepro
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail
config=${1:-configs/paper.toml}
results=${2:-results/paper}
shards=${SLURM_ARRAY_TASK_COUNT:?submit with --array=0-N}
exec .venv/bin/nerepro sweep "$config" --results "$results" --shard "${SLURM_ARRAY_TASK_ID}/${shards}"
