#!/usr/bin/env bash
# Everything the GPU-speed issue needs from one lent GPU, in one command (about 8 minutes on an
# H100/H200 for steps 1-2, 1-3 more for step 3; run it as the device tool's command with timeout_s 540
# or more and give the machine back):
#   1. the CUDA path end to end: train.py in bf16 with --compile to step 40, then resumed to 60
#      (RESUMABLE --steps), then sample.py from the result (correctness, not speed); reflow: 512
#      pairs of that run (sample.py --pairs), 20 steps of train.py --pairs, one-step samples;
#   2. bench/bench_train.py: img/s, TFLOP/s, MFU against a matmul peak measured in the same run,
#      peak memory, eager then compiled, for imagenet64 and small; bench/bench_sample.py: sampling
#      img/s and the share outside the network at NFE 8;
#   3. bench/bench_peer.py: our network and OT coupling against torchcfm's ADM UNetModel configured as
#      our presets and its exact OT (POT), interleaved in the same run (eager; PEER_COMPILE=1 adds
#      --compile). torchcfm and POT come as wheels in the git-ignored peer_wheels/ (the device tool's
#      carry: ["peer_wheels"]), installed with pip --no-deps into a temporary folder; without pip the
#      torchcfm wheel (pure Python, a zip) goes on the path as it is. POT's wheel is for one Python
#      version (cp311): on another the OT part is skipped with a note. At most 5 minutes.
#      PEER=0 skips step 3; PEER=only runs step 3 alone (about 2 minutes).
# Everything lands in $OUT (log.txt, bench_train*.md, bench_peer.md); a CPU dry run:
#   OUT=/tmp/o DRY=1 bash bench/gpu_session.sh
# Before a session, on this machine (peer_wheels/ is git-ignored, so a fresh checkout lacks it;
# pick POT's wheel for the GPU machine's Python, e.g. --python-version 3.12 --only-binary=:all:):
#   python -m pip download --no-deps -d peer_wheels torchcfm==1.0.7 pot==0.9.7.post1
# The device tool allows 600 s a command and 15 min in all, start-up included: run PEER=0 first
# (steps 1-2), then PEER=only in a second call on the still-warm machine, then give it back.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_session}
PEER=${PEER:-1}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  if [ -n "${DRY:-}" ]; then size="--device cpu --preset tiny --batch-size 8"; presets=tiny; batch=8; compile=""
    dev_flag="--device cpu"
  else size="--preset small --batch-size 128"; presets=imagenet64,small; batch=128; compile="--compile"; dev_flag=""; fi
  if [ "$PEER" != only ]; then
    run=$(mktemp -d)
    python3 train.py $size $compile --steps 40 --ckpt-every 20 --sample-every 20 --log-every 10 --out "$run"
    python3 train.py $size $compile --steps 60 --ckpt-every 20 --log-every 10 --out "$run" --resume &&
      python3 sample.py --ckpt "$run/ckpt.pt" --nfe 8 --n 4 --out-png "$OUT/samples.png" &&
      echo "CUDA path: train (compile) -> resume -> sample OK"
    # reflow on CUDA: the teacher's pairs (bf16 solve, float32 state), then a run on them from its EMA
    python3 sample.py --ckpt "$run/ckpt.pt" --pairs "$run/pairs" --count 512 --chunk 256 --nfe 8 $dev_flag &&
      python3 train.py --pairs "$run/pairs" --out "$run/reflow" --steps 20 --ckpt-every 20 --log-every 10 \
        --batch-size $( [ -n "${DRY:-}" ] && echo 8 || echo 128 ) $dev_flag &&
      python3 sample.py --ckpt "$run/reflow" --nfe 1 --n 4 --out-png "$OUT/samples_reflow_nfe1.png" $dev_flag &&
      echo "CUDA path: pairs -> train --pairs -> sample OK"
    dev=$( [ -n "${DRY:-}" ] && echo --device cpu )
    steps=$( [ -n "${DRY:-}" ] && echo 2 || echo 10 )
    python3 bench/bench_train.py --presets $presets --batch-size $batch --steps $steps --priors none $dev \
      --out "$OUT/bench_train.md"
    [ -n "$compile" ] && python3 bench/bench_train.py --presets $presets --batch-size $batch --steps $steps \
      --priors none --compile --out "$OUT/bench_train_compile.md"
    python3 bench/bench_sample.py --presets $presets --n $( [ -n "${DRY:-}" ] && echo 8 || echo 256 ) --nfe 8 $dev
  fi
  if [ "$PEER" != 0 ]; then
    echo "== step 3: bench/bench_peer.py (torchcfm side by side)"
    wheels=${PEER_WHEELS:-peer_wheels}
    site="$(mktemp -d)/peer_site"
    peer_path=""
    if python3 -m pip --version >/dev/null 2>&1; then
      python3 -m pip install --quiet --no-deps --no-index --target "$site" "$wheels"/torchcfm-*.whl && peer_path=$site
      python3 -m pip install --quiet --no-deps --no-index --target "$site" "$wheels"/pot-*.whl ||
        echo "POT's wheel does not install on this Python: bench_peer.py skips the OT part"
    fi
    if [ -z "$peer_path" ]; then  # no pip: the pure-Python torchcfm wheel on the path as it is (a zip)
      peer_path=$(ls "$wheels"/torchcfm-*.whl 2>/dev/null | head -1)
      echo "no pip install of torchcfm: using the wheel itself, ${peer_path:-none found in $wheels}"
    fi
    if [ -n "${DRY:-}" ]; then peer="--device cpu --smoke"
    else peer="--presets imagenet64,small --batch-size 128 $( [ -n "${PEER_COMPILE:-}" ] && echo --compile )"; fi
    timeout 300 python3 bench/bench_peer.py $peer --peer-path "${peer_path:-$wheels}" --out "$OUT/bench_peer.md"
    echo "bench_peer.py exit status $?"
  fi
} 2>&1 | tee "$OUT/log.txt"
