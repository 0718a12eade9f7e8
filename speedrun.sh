#!/usr/bin/env bash
# The nanochat pipeline in plain shell: tokenizer -> base -> base eval -> mid -> chat eval -> SFT -> chat eval -> report.
#
# Launch it detached and follow the log (the way of upstream's speedrun):
#   screen -L -Logfile speedrun.log -S speedrun bash speedrun.sh        # attach later: screen -r speedrun
#   nohup bash speedrun.sh > speedrun.log 2>&1 &                          # or without screen
#   tail -f speedrun.log                                                  # follow the progress
# Overrides (environment): NPROC_PER_NODE (1), DEVICE_BS (4 for base and mid; SFT uses SFT_BS, default 2),
#   SEQ_LEN (1024 for base and mid), WANDB_RUN (default: `nanotui config wandb_run`, else dummy = no W&B),
#   NANOCHAT_BASE_DIR (~/.cache/nanochat),
#   PROFILE=cpu-demo: the offline demo pipeline on a laptop CPU in about ten minutes (no download, no GPU).
#   NANOCHAT_RUN_ID (new for each invocation): the lineage id every stage writes into its checkpoints, so the later
#   stages load THIS run's models; resuming a stage of an earlier invocation needs that invocation's id.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python}
PROFILE=${PROFILE:-4090}
export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}
export PYTHONUNBUFFERED=1
export NANOCHAT_RUN_ID=${NANOCHAT_RUN_ID:-speedrun-$(date -u +%Y%m%d-%H%M%S)-$$}
echo "run id: $NANOCHAT_RUN_ID (checkpoints of other runs with the same model tag are moved aside, never mixed)"
mkdir -p "$NANOCHAT_BASE_DIR"

NPROC_PER_NODE=${NPROC_PER_NODE:-1}
# launch MODULE FLAGS...: one process, or torchrun with `--` so that torchrun does not read the script's flags
launch() {
    local module=$1; shift
    if [ "$NPROC_PER_NODE" -gt 1 ]; then
        "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC_PER_NODE" -m "$module" -- "$@"
    else
        "$PY" -m "$module" "$@"
    fi
}
stage() { echo "=== $* ==="; "$@"; }

if [ "$PROFILE" = "cpu-demo" ]; then
    WANDB_RUN=${WANDB_RUN:-dummy}
    DEVICE_BS=${DEVICE_BS:-8}
    SFT_BS=${SFT_BS:-4}
    SEQ_LEN=${SEQ_LEN:-256}
    stage "$PY" -m nanochat.report reset
    stage "$PY" -m nanochat.dataset --demo
    stage "$PY" -m nanochat.scripts.tok_train --vocab_size=4096 --max_chars=20000000
    stage "$PY" -m nanochat.scripts.tok_eval
    stage "$PY" -m nanochat.scripts.base_train --depth=2 --max_seq_len="$SEQ_LEN" --device_batch_size="$DEVICE_BS" \
        --total_batch_size=8192 --num_iterations=200 --eval_every=50 --eval_tokens=65536 --core_metric_every=-1 \
        --sample_every=100 --save_every=25 --model_tag=demo --run="$WANDB_RUN"
    stage "$PY" -m nanochat.scripts.base_eval --model_tag=demo --demo
    stage "$PY" -m nanochat.scripts.mid_train --model_tag=demo --device_batch_size="$DEVICE_BS" \
        --max_seq_len="$SEQ_LEN" --total_batch_size=8192 --num_iterations=100 --save_every=25 --demo \
        --run="$WANDB_RUN"
    stage "$PY" -m nanochat.scripts.chat_eval -i mid --model_tag=demo --demo
    stage "$PY" -m nanochat.scripts.chat_sft --model_tag=demo --device_batch_size="$SFT_BS" --num_iterations=100 \
        --save_every=25 --demo --run="$WANDB_RUN"
    stage "$PY" -m nanochat.scripts.chat_eval -i sft --model_tag=demo --demo
    stage "$PY" -m nanochat.report generate
    cp "$NANOCHAT_BASE_DIR/report/report.md" report.md
    echo "Try it: $PY -m nanochat.scripts.chat_cli -p 'How many r are in strawberry?'"
    exit 0
fi

# the single-GPU plan (PROFILE=4090, the default); NPROC_PER_NODE=8 DEVICE_BS=32 SEQ_LEN=2048 is upstream's 8xH100
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # the GPU does the work; keep CPU threads from oversubscribing
# WANDB_RUN, else `wandb_run` of ~/.config/nanotui/config.toml (`nanotui config`), else dummy (no W&B)
WANDB_RUN=${WANDB_RUN:-$(nanotui config wandb_run 2>/dev/null || true)}
WANDB_RUN=${WANDB_RUN:-dummy}
DEVICE_BS=${DEVICE_BS:-4}
SFT_BS=${SFT_BS:-2}
SEQ_LEN=${SEQ_LEN:-1024}
stage "$PY" -m nanochat.report reset
# enough shards for the tokenizer, and upstream's 1,000 identity conversations (2.3 MB) for mid and SFT
# (NANOCHAT_IDENTITY_FILE=your.jsonl to use your own)
stage "$PY" -m nanochat.dataset -n 8 --identity
"$PY" -m nanochat.dataset -n 240 > "$NANOCHAT_BASE_DIR/dataset_download.log" 2>&1 &   # the rest, in the background
DATASET_PID=$!
stage "$PY" -m nanochat.scripts.tok_train --max_chars=2000000000
stage "$PY" -m nanochat.scripts.tok_eval
echo "waiting for the dataset download (pid $DATASET_PID)"; wait "$DATASET_PID"
stage launch nanochat.scripts.base_train --depth=20 --device_batch_size="$DEVICE_BS" --max_seq_len="$SEQ_LEN" \
    --run="$WANDB_RUN"
stage launch nanochat.scripts.base_eval
stage launch nanochat.scripts.mid_train --device_batch_size="$DEVICE_BS" --max_seq_len="$SEQ_LEN" \
    --run="$WANDB_RUN"
stage launch nanochat.scripts.chat_eval -i mid
stage launch nanochat.scripts.chat_sft --device_batch_size="$SFT_BS" --run="$WANDB_RUN"
stage launch nanochat.scripts.chat_eval -i sft
stage "$PY" -m nanochat.report generate
cp "$NANOCHAT_BASE_DIR/report/report.md" report.md
echo "Chat with it: $PY -m nanochat.scripts.chat_cli   (or -p 'Why is the sky blue?')"
