#!/usr/bin/env bash
# The at-scale trainer on SLURM: one torchrun per node, all joining one rendezvous on the first
# node of the allocation. Inference servers run elsewhere (listed in the config).
#
#   sbatch --nodes 4 --gpus-per-node 8 examples/slurm_train.sh examples/cluster.toml [KEY=VALUE ...]
#
#SBATCH --job-name=asearcher-train
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail

CONFIG="$1"
shift
HEAD_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
GPUS_PER_NODE="${SLURM_GPUS_ON_NODE:-8}"

# One task per node; each reads its node rank from SLURM_NODEID inside srun.
srun --kill-on-bad-exit=1 bash -c "
  torchrun \
    --nnodes $SLURM_JOB_NUM_NODES \
    --nproc_per_node $GPUS_PER_NODE \
    --node_rank \$SLURM_NODEID \
    --master_addr $HEAD_NODE \
    --master_port 29500 \
    -m asearcher train '$CONFIG' $*
"
