#!/usr/bin/env bash
# Everything a GPU machine should check, in one go: the CUDA tests, then the GPU benchmarks.
#
#     bash benchmarks/gpu_check.sh            # from the repository root, with usae importable
#
# Logs and JSON are packed into $OUT/gpu_check.tgz after each part (default OUT:
# benchmarks/results/gpu), so a run cut short still returns what it finished. Each part has
# its own time limit and a failing part does not stop the others.
# Packages the machine lacks can come as wheels in .whl/ (installed into /tmp/site first).
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
PACK=$(cd "$OUT" && pwd)/gpu_check.tgz
OUT=$(mktemp -d)  # the parts' files, packed into $PACK; absolute: the benchmarks run from benchmarks/
ROOT=$(pwd)
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT" PYTHONUNBUFFERED=1

part() {  # part NAME SECONDS COMMAND...: run COMMAND under a time limit, its output to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    [[ -z "${PARTS:-}" || " $PARTS " == *" $name "* ]] || return 0  # PARTS="tests from_disk": only those
    echo "== $name (limit ${limit} s)"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "   rc $rc in $((SECONDS - start)) s"
    tail -n 25 "$OUT/$name.log"
    tar -czf "$PACK" -C "$OUT" .
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,temperature.gpu --format=csv >"$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
python3 -c "import torch, zarr, numcodecs, crc32c, dask, timm; print('torch', torch.__version__, 'zarr', zarr.__version__,
'timm', timm.__version__, 'cuda', torch.cuda.is_available())"

part tests 150 python3 -m pytest -m gpu tests/gpu tests/activations/test_loader.py -q -p no:cacheprovider \
    -o addopts="" --timeout 140
cd benchmarks
part from_disk_gather 240 python3 bench_from_disk.py --device cuda --images 2048 --gather \
    --out "$OUT/from_disk_cuda_gather.json"
part step_fp32 75 python3 bench_train_step.py --device cuda --out "$OUT/train_step_cuda.json"
part step_bf16 75 python3 bench_train_step.py --device cuda --precision bf16 --out "$OUT/train_step_cuda_bf16.json"
part step_bf16_128img 75 python3 bench_train_step.py --device cuda --precision bf16 --images 128 \
    --out "$OUT/train_step_cuda_bf16_128img.json"
part step_fp32_128img 75 python3 bench_train_step.py --device cuda --images 128 \
    --out "$OUT/train_step_cuda_128img.json"
part profile 45 python3 profile_train_step.py --device cuda --precision bf16 --threads 16 \
    --out "$OUT/train_step_profile_cuda_bf16.json"
part from_disk 200 python3 bench_from_disk.py --device cuda --images 2048 --out "$OUT/from_disk_cuda.json"
part from_disk_loop 150 python3 bench_from_disk.py --device cuda --images 2048 --loop --out "$OUT/from_disk_cuda_loop.json"
part maco 60 python3 bench_maco.py --config ../presets/random.yaml --device cuda --out "$OUT/maco_cuda_random.json"
part from_disk_threads 120 python3 bench_from_disk.py --device cuda --images 2048 --threads \
    --out "$OUT/from_disk_cuda_threads.json"
echo "== done in $SECONDS s"
