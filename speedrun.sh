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
# Run it again after a crash, a kill or a reboot and it CONTINUES the same run: the run id (NANOCHAT_RUN_ID, the
#   lineage every stage writes into its checkpoints) is kept in $NANOCHAT_BASE_DIR/speedrun_state.json until the
#   pipeline finishes; finished stages are skipped; an interrupted training stage resumes from this run's newest
#   checkpoint. SPEEDRUN_FRESH=1 bash speedrun.sh starts over with a new run (the old run's checkpoints are moved
#   aside, never deleted). An out-of-memory exit (3) is retried at half the device batch from the emergency
#   checkpoint, with the total batch unchanged. The knobs are checked before anything is downloaded.
#   Under `nanotui run -- bash speedrun.sh` nanotui does the skipping, resuming and OOM fallback itself.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python}
PROFILE=${PROFILE:-4090}
export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}
export PYTHONUNBUFFERED=1
NPROC_PER_NODE=${NPROC_PER_NODE:-1}
if [ "$PROFILE" = "cpu-demo" ]; then
    WANDB_RUN=${WANDB_RUN:-dummy}; DEVICE_BS=${DEVICE_BS:-8}; SFT_BS=${SFT_BS:-4}; SEQ_LEN=${SEQ_LEN:-256}
else  # the single-GPU plan (PROFILE=4090, the default); NPROC_PER_NODE=8 DEVICE_BS=32 SEQ_LEN=2048 is upstream's 8xH100
    # WANDB_RUN, else `wandb_run` of ~/.config/nanotui/config.toml (`nanotui config`), else dummy (no W&B)
    WANDB_RUN=${WANDB_RUN:-$(nanotui config wandb_run 2>/dev/null || true)}
    WANDB_RUN=${WANDB_RUN:-dummy}; DEVICE_BS=${DEVICE_BS:-4}; SFT_BS=${SFT_BS:-2}; SEQ_LEN=${SEQ_LEN:-1024}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # the GPU does the work; keep CPU threads from oversubscribing
fi
export DEVICE_BS SFT_BS SEQ_LEN NPROC_PER_NODE
helper() { "$PY" -m nanochat.speedrun_helper "$@"; }
helper validate "$PROFILE"   # DEVICE_BS, SFT_BS, SEQ_LEN, NPROC_PER_NODE: refused now, not hours from now
mkdir -p "$NANOCHAT_BASE_DIR"
# run CMD...: one process, or torchrun with `--` so that torchrun does not read the script's flags
run() {
    local module=$1; shift
    if [ "$NPROC_PER_NODE" -gt 1 ]; then
        "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC_PER_NODE" -m "$module" -- "$@"
    else
        "$PY" -m "$module" "$@"
    fi
}
if [ -n "${NANOTUI_PARENT_RUN:-}" ]; then
    # under `nanotui run -- bash speedrun.sh`: nanotui skips finished stages and supervises each training stage
    # (resume, OOM fallback) as a run of its own, with its run id as the lineage
    echo "run id: $NANOCHAT_RUN_ID (nanotui supervises this script)"
    stage() { shift; echo "=== $* ==="; "$@"; }
    train() { shift 2; echo "=== $1 ==="; run "$@"; }
    helper() { [ "$1" != finish ] && "$PY" -m nanochat.speedrun_helper "$@"; return 0; }
else
    NANOCHAT_RUN_ID=$(helper begin "$PROFILE" ${SPEEDRUN_FRESH:+--fresh})
    export NANOCHAT_RUN_ID
    echo "run id: $NANOCHAT_RUN_ID (checkpoints of other runs with the same model tag are moved aside, never mixed)"
    # stage NAME CMD...: run unless this run finished it already
    stage() { local name=$1; shift; helper run "$name" -- "$@"; }
    # train NAME CKPT_DIR MODULE FLAGS...: resumed from this run's newest checkpoint in CKPT_DIR, retried at half
    # the batch after an OOM
    train() {
        local name=$1 ckpt=$2 module=$3; shift 3
        if [ "$NPROC_PER_NODE" -gt 1 ]; then
            helper run "$name" --ckpt "$ckpt" -- "$PY" -m torch.distributed.run --standalone \
                --nproc_per_node="$NPROC_PER_NODE" -m "$module" -- "$@"
        else
            helper run "$name" --ckpt "$ckpt" -- "$PY" -m "$module" "$@"
        fi
    }
fi
launch() {  # launch NAME MODULE FLAGS...: an evaluation, through torchrun when NPROC_PER_NODE > 1
    local name=$1 module=$2; shift 2
    if [ "$NPROC_PER_NODE" -gt 1 ]; then
        stage "$name" "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC_PER_NODE" -m "$module" \
            -- "$@"
    else
        stage "$name" "$PY" -m "$module" "$@"
    fi
}

if [ "$PROFILE" = "cpu-demo" ]; then
    stage report_reset "$PY" -m nanochat.report reset
    stage data "$PY" -m nanochat.dataset --demo
    stage tok_train "$PY" -m nanochat.scripts.tok_train --vocab_size=4096 --max_chars=20000000
    stage tok_eval "$PY" -m nanochat.scripts.tok_eval
    train base_train base_checkpoints/demo nanochat.scripts.base_train --depth=2 --max_seq_len="$SEQ_LEN" \
        --device_batch_size="$DEVICE_BS" --total_batch_size=8192 --num_iterations=200 --eval_every=50 \
        --eval_tokens=65536 --core_metric_every=-1 --sample_every=100 --save_every=25 --model_tag=demo \
        --run="$WANDB_RUN"
    stage base_eval "$PY" -m nanochat.scripts.base_eval --model_tag=demo --demo
    train mid_train mid_checkpoints/demo nanochat.scripts.mid_train --model_tag=demo \
        --device_batch_size="$DEVICE_BS" --max_seq_len="$SEQ_LEN" --total_batch_size=8192 --num_iterations=100 \
        --save_every=25 --demo --run="$WANDB_RUN"
    stage chat_eval_mid "$PY" -m nanochat.scripts.chat_eval -i mid --model_tag=demo --demo
    train chat_sft chatsft_checkpoints/demo nanochat.scripts.chat_sft --model_tag=demo \
        --device_batch_size="$SFT_BS" --num_iterations=100 --save_every=25 --demo --run="$WANDB_RUN"
    stage chat_eval_sft "$PY" -m nanochat.scripts.chat_eval -i sft --model_tag=demo --demo
    stage report "$PY" -m nanochat.report generate
    cp "$NANOCHAT_BASE_DIR/report/report.md" report.md
    helper finish
    echo "Try it: $PY -m nanochat.scripts.chat_cli -p 'How many r are in strawberry?'"
    exit 0
fi

stage report_reset "$PY" -m nanochat.report reset
# enough shards for the tokenizer, and upstream's 1,000 identity conversations (2.3 MB) for mid and SFT
# (NANOCHAT_IDENTITY_FILE=your.jsonl to use your own)
stage data_head "$PY" -m nanochat.dataset -n 8 --identity
# the rest in the background (shards already on disk are skipped)
"$PY" -m nanochat.dataset -n 240 > "$NANOCHAT_BASE_DIR/dataset_download.log" 2>&1 &
DATASET_PID=$!
stage tok_train "$PY" -m nanochat.scripts.tok_train --max_chars=2000000000
stage tok_eval "$PY" -m nanochat.scripts.tok_eval
echo "waiting for the dataset download (pid $DATASET_PID)"; wait "$DATASET_PID"
train base_train base_checkpoints/d20 nanochat.scripts.base_train --depth=20 --device_batch_size="$DEVICE_BS" \
    --max_seq_len="$SEQ_LEN" --run="$WANDB_RUN"
launch base_eval nanochat.scripts.base_eval
train mid_train mid_checkpoints/d20 nanochat.scripts.mid_train --device_batch_size="$DEVICE_BS" \
    --max_seq_len="$SEQ_LEN" --run="$WANDB_RUN"
launch chat_eval_mid nanochat.scripts.chat_eval -i mid
train chat_sft chatsft_checkpoints/d20 nanochat.scripts.chat_sft --device_batch_size="$SFT_BS" --run="$WANDB_RUN"
launch chat_eval_sft nanochat.scripts.chat_eval -i sft
stage report "$PY" -m nanochat.report generate
cp "$NANOCHAT_BASE_DIR/report/report.md" report.md
helper finish
echo "Chat with it: $PY -m nanochat.scripts.chat_cli   (or -p 'Why is the sky blue?')"
