#!/usr/bin/env bash
# The GPU figures BENCHMARKS.md still lacks, as one prepared run for a lent GPU machine (one card; ~10 min on an
# H100/H200). Each check has its own time limit, so one that hangs or runs out of memory does not cost the
# others; everything printed goes to $OUT (default gpu_out/) beside a note of the machine. Copy the tables into
# BENCHMARKS.md with the machine named. Needs: `pip install torch==2.13.0 && pip install -e .` on the machine.
#
#   bash benchmarks/gpu_checks.sh                  # all checks
#   ONLY="wan13b lora" bash benchmarks/gpu_checks.sh   # some of them
set -uo pipefail
out=${OUT:-gpu_out}
mkdir -p "$out"
only=${ONLY:-"machine wan13b wan14b_ckpt wan14b_swap_fp8 fsdp1 lora segment"}

check() {  # check NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    [[ " $only " == *" $name "* ]] || return 0
    echo "== $name ($limit s): $*" | tee "$out/$name.txt"
    local t0=$SECONDS
    timeout "$limit" "$@" >>"$out/$name.txt" 2>&1
    echo "== $name: exit $? after $((SECONDS - t0)) s" | tee -a "$out/$name.txt"
}

check machine 30 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python -c "import torch; print(torch.__version__, torch.version.cuda)"'
# Issue targets: 40% MFU in bf16 and the paper's 600 + 900 steps of Wan 1.3B (the bench projects the time).
check wan13b 180 setseq bench --shape wan-1.3b --frames 33,81 --steps 3
# Wan 14B on one card: what fits with checkpointing alone, then the small-card settings (block swap + fp8).
check wan14b_ckpt 150 setseq bench --shape wan-14b --frames 33 --gradient-checkpointing --steps 3
check wan14b_swap_fp8 150 setseq bench --shape wan-14b --frames 33 --gradient-checkpointing --block-swap 20 --fp8 --steps 3
# Block swap against FSDP2's CPUOffloadPolicy (model.fsdp_offload), both holding every block's weights on the
# host (Wan 14B has 40 blocks): the faster becomes the remedy the memory refusal names. Not in the default
# list (about 8 more minutes): ONLY="wan14b_swap_all wan14b_offload" bash benchmarks/gpu_checks.sh
check wan14b_swap_all 240 setseq bench --shape wan-14b --frames 33 --gradient-checkpointing --block-swap 40 --steps 2
check wan14b_offload 240 setseq bench --shape wan-14b --frames 33 --gradient-checkpointing --fsdp-offload --steps 2
# The torch engine in one process (the multi-GPU rows need a machine with several cards: --procs 2/4/8, with
# and without --replicate and --fp8).
check fsdp1 120 setseq bench --shape wan-1.3b --frames 33 --steps 3 --procs 1
# The LoRA layer's paths in bf16 at a Wan 1.3B width (the fused path's bf16 rounding is the open question).
check lora 90 python scripts/bench_lora.py --device cuda --dtype bfloat16 --width 1536 --tokens 14040 --ranks 32 128
# `--mask auto`'s segmentation (Grounding DINO box + SAM 2.1 video tracking, random weights at hiera-large's
# shapes: no hub access there) over 81 frames at 480x832: time and peak memory, and that closing frees it.
check segment 240 python benchmarks/segment_bench.py --device cuda --frames 81 --size 480x832
echo "wrote $out/"
