#!/usr/bin/env bash
# Everything the GPU-speed issue needs from one lent GPU, in one command (about 8 minutes on an
# H100/H200; run it as the device tool's command with timeout_s 540 and give the machine back):
#   1. the CUDA path end to end: train.py in bf16 with --compile to step 40, then resumed to 60
#      (RESUMABLE --steps), then sample.py from the result (correctness, not speed);
#   2. bench/bench_gpu.py: img/s, TFLOP/s, MFU against a matmul peak measured in the same run,
#      peak memory, eager and compiled, for imagenet64 and small; sampling at NFE 8.
# Everything lands in $OUT (log.txt, bench_gpu.md); a CPU dry run: OUT=/tmp/o DRY=1 bash bench/gpu_session.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  if [ -n "${DRY:-}" ]; then size="--device cpu --preset tiny --batch-size 8"; presets=tiny; batch=8; compile=""
  else size="--preset small --batch-size 128"; presets=imagenet64,small; batch=128; compile="--compile"; fi
  run=$(mktemp -d)
  python3 train.py $size $compile --steps 40 --ckpt-every 20 --sample-every 20 --log-every 10 --out "$run"
  python3 train.py $size $compile --steps 60 --ckpt-every 20 --log-every 10 --out "$run" --resume &&
    python3 sample.py --ckpt "$run/ckpt.pt" --nfe 8 --n 4 --out-png "$OUT/samples.png" &&
    echo "CUDA path: train (compile) -> resume -> sample OK"
  python3 bench/bench_gpu.py --presets $presets --batch-size $batch --steps 10 $compile --out "$OUT/bench_gpu.md" \
    $( [ -n "${DRY:-}" ] && echo --device cpu --sample-n 8 --steps 2 )
} 2>&1 | tee "$OUT/log.txt"
