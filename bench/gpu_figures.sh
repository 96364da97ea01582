#!/usr/bin/env bash
# The README's GPU figures for bench_batch.py, in one call on a machine with an NVIDIA GPU and no network.
#
# It needs, in .gpu/ beside the repository (README, Benchmarks, "On a GPU", says how each was made):
#   llama_cpp_cuda.tar.gz  llama-cpp-python 0.3.36 built with CUDA for sm_90 (its package folder, one copy a library)
#   *.whl          what the bench imports that the machine lacks (gristmill itself is this tree, laid out below)
#   *.pack.gguf    shape-model packs (bench/shape_model.py): the embedded model's shape and Qwen2.5-32B Q4_K_M's
#   lib/           libgomp.so.1, used only where the machine has none
# and a CUDA 13 runtime (libcudart, libcublas) somewhere on the machine. Output: stdout and $OUT/ (or /tmp/out).
# With arguments, one shape model and bench options of one's own, e.g.
#   gpu_figures.sh qwen2.5-32b --items-per-seq 2 --round 8 --tokens 64 --batches 1,4,8,9,12,16,24,32;
# `gpu_figures.sh cli` runs `gristmill generate` itself on the GPU, and stops there unless a NAME and options follow.
# Mind the device's limit on one command: the default run takes ~3 minutes, the timeouts below allow ~8.
# The exit status is the worst of the steps'.
set -u -o pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
out=${OUT:-/tmp/out}
mkdir -p "$out"
exec > >(tee "$out/gpu_figures.log") 2>&1
tee_pid=$!
status=0
finish() {  # the worst status seen, once tee has written the log's last line
    exec >&- 2>&-
    wait "$tee_pid"
    exit "$status"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/*.whl || exit 1
tar xzf .gpu/llama_cpp_cuda.tar.gz -C /tmp/site || exit 1
# gristmill from this tree, as the wheel lays it out (gristmill.app = app/, ...): the figures are of this commit
rm -rf /tmp/site/gristmill && cp -r gristmill /tmp/site/gristmill && cp -r app models db /tmp/site/gristmill/ || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 GRISTMILL_CACHE_DIR=/tmp/gristmill-cache

# the CUDA 13 runtime the build links (libcudart.so.13, libcublas.so.13, libcublasLt.so.13): wherever it is
cuda_libs=$(find /usr/local /opt /usr/lib -xdev \( -name 'libcublas.so.13*' -o -name 'libcudart.so.13*' \) \
    -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
gomp=$(ldconfig -p | grep 'libgomp.so.1 ' >/dev/null || echo "$here/.gpu/lib:")
export LD_LIBRARY_PATH="${cuda_libs}${gomp}${LD_LIBRARY_PATH:-}"
echo "CUDA runtime from: $cuda_libs"
python3 -c "import llama_cpp as l; print(l.__version__, 'GPU offload:', bool(l.llama_supports_gpu_offload()))" || exit 1

models=/dev/shm
[ "$(df --output=avail -B1G /dev/shm | tail -1)" -gt 24 ] || models=/tmp
nproc; free -g | head -2

figures() {  # name, timeout, bench options...
    local name=$1 limit=$2
    shift 2
    python3 bench/shape_model.py build ".gpu/$name.pack.gguf" "$models/$name.gguf" || return
    timeout "$limit" python3 bench/bench_batch.py --model "$models/$name.gguf" --gpu-layers -1 --no-counts "$@"
    local rc=$?
    echo "exit $rc ($name)"
    rm -f "$models/$name.gguf"
    return $rc
}

cli() {  # `gristmill generate` itself on the GPU: the sample instructions, every layer offloaded, --batch 16
    local db=/tmp/gpu-cli.db
    rm -f "$db"*
    python3 bench/shape_model.py build .gpu/gemma3-270m.pack.gguf "$models/cli.gguf" || return
    cd /tmp || return  # not the repository: its gristmill/ would shadow the installed package
    python3 -m gristmill --db "$db" add "$(python3 -c 'import gristmill.app, pathlib; print(pathlib.Path(gristmill.app.__file__).parent / "data" / "sample_instructions.jsonl")')"
    local rc again
    python3 -m gristmill --db "$db" generate --model "$models/cli.gguf" --gpu-layers -1 --batch 16 --max-tokens 64 </dev/null
    rc=$?
    echo "exit $rc (generate)"
    python3 -m gristmill --db "$db" generate --model "$models/cli.gguf" --gpu-layers -1 --batch 16 --max-tokens 64 </dev/null
    again=$?
    echo "exit $again (generate again: nothing left to do)"
    python3 -c "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(\"SELECT count(*), sum(completion_tokens), \
min(json_extract(timings, '$.batch')), max(json_extract(timings, '$.batch')) FROM generations\").fetchone())" "$db"
    rm -f "$models/cli.gguf"
    cd "$here" || exit
    [ "$rc" -ne 0 ] && return "$rc"
    return "$again"
}

worst() { local rc=$?; [ "$rc" -gt "$status" ] && status=$rc; return 0; }

if [ "${1:-}" = cli ]; then
    cli; worst
    shift
    [ $# -gt 0 ] || finish
fi
if [ $# -gt 0 ]; then  # one shape model with other bench options: gpu_figures.sh NAME [OPTIONS...]
    figures "$1" 400 "${@:2}"; worst
    finish
fi
# the embedded model's shape: 270M parameters, a decode step far from filling the GPU
figures gemma3-270m 200 --items-per-seq 4 --round 16 --tokens 128; worst
# the product's target: Qwen2.5-32B base at Q4_K_M (a 20 GB model; memory-bound decode)
figures qwen2.5-32b 260 --items-per-seq 2 --round 8 --tokens 64; worst
finish
