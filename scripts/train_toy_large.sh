#!/usr/bin/env bash
# The "toy-large" model (src/setseq/assets/toy_large, `--model toy-large`; the default until 2026-11-29, the
# one the ablation bench was measured on), trained from scratch in one command: every phase it went through,
# in order, with the arguments it had (BENCHMARKS.md, "Toy text-to-video model"). About 4 h 40 min on 2 idle
# CPU cores; the default "toy" model is made in about 60 minutes by scripts/train_toy_model.sh.
#
#     bash scripts/train_toy_large.sh OUT                            # OUT/model is the toy model folder
#     MINUTES_SCALE=0.005 POOL=64 bash scripts/train_toy_large.sh /tmp/toy_smoke  # smoke run: every step, tiny budgets
#
# Budgets are wall-clock minutes (each script's schedule runs on time), so a re-run makes a model of the same
# recipe, not the same bytes. MINUTES_SCALE multiplies every budget; POOL is the DiT's latent pool size;
# EVAL_ARGS go to the evaluation (e.g. "--n 10 --n-full 0" for a quick one).
# Phases, each starting from the one before:
#   codec    frame-wise AutoencoderKLWan (4x space, z 8)                    scripts/train_toy_vae.py, 13 min
#   DiT 1    Wan DiT 8 x 128 on its latents, text encoder trained with it   scripts/train_toy.py, 62 min
#   DiT 2    text encoder re-made on caption parsing (2 min) then frozen    55 min
#   DiT 3-4  fewer image steps (motion is learnt on clips)                  60 + 45 min
#   decoder  the VAE's decoder alone, sprite-colour loss (latents unchanged) 25 min
#   eval     the quality gate, 120 + 40 prompts; the sampler defaults written into the model
set -euo pipefail
OUT=${1:?usage: train_toy_large.sh OUT}
SCALE=${MINUTES_SCALE:-1}
POOL=${POOL:-3072}
cd "$(dirname "$0")/.."
m() { python3 -c "print(max(0.01, $1 * $SCALE))"; }
mkdir -p "$OUT"
DIT="--layers 8 --text-layers 3 --simple-frac 0.6 --pool $POOL --refresh $((POOL < 256 ? POOL : 256))"

python scripts/train_toy_vae.py --out "$OUT/vae" --minutes "$(m 13)"
python scripts/train_toy.py --out "$OUT/dit1" --vae "$OUT/vae" --minutes "$(m 62)" $DIT --lr 1e-3
python scripts/train_toy.py --out "$OUT/dit2" --vae "$OUT/vae" --init-from "$OUT/dit1" \
    --text-pretrain-minutes "$(m 2)" --minutes "$(m 55)" $DIT --lr 7e-4 --warmup-minutes "$(m 1)"
python scripts/train_toy.py --out "$OUT/dit3" --vae "$OUT/vae" --init-from "$OUT/dit2" --freeze-text \
    --minutes "$(m 60)" $DIT --lr 5e-4 --warmup-minutes "$(m 1)" --image-frac 0.1 --seed 5
python scripts/train_toy.py --out "$OUT/dit4" --vae "$OUT/vae" --init-from "$OUT/dit3" --freeze-text \
    --minutes "$(m 45)" $DIT --lr 4e-4 --warmup-minutes "$(m 1)" --image-frac 0.1 --seed 7
python scripts/train_toy_vae.py --out "$OUT/decoder" --init-from "$OUT/dit4/vae" --decoder-only \
    --minutes "$(m 25)" --colour-weight 1 --fg-weight 16 --lr 3e-4 --lr-min 2e-5

# The model folder: the last DiT phase with the fine-tuned decoder, and every phase's log beside it.
rm -rf "$OUT/model"
cp -r "$OUT/dit4" "$OUT/model"
rm -rf "$OUT/model/vae"
mkdir "$OUT/model/vae"
cp "$OUT/decoder/config.json" "$OUT/decoder/diffusion_pytorch_model.safetensors" "$OUT/model/vae/"
cp "$OUT/vae/train_log.txt" "$OUT/model/vae_train_log.txt"
cp "$OUT/decoder/train_log.txt" "$OUT/model/vae_decoder_train_log.txt"
for k in 1 2 3; do
    cp "$OUT/dit$k/train_log.txt" "$OUT/model/train_log_phase$k.txt"
    cp "$OUT/dit$k/train_log.jsonl" "$OUT/model/train_log_phase$k.jsonl"
done
python scripts/eval_toy.py --model "$OUT/model" --shift 3 --write-defaults ${EVAL_ARGS:-}
echo "toy model: $OUT/model (gate: $OUT/model/eval_toy.json)"
