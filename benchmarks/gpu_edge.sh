#!/usr/bin/env bash
# The edge's GPU figures in one go: the issue's goal of 20,000 frames/s end to end.
#
#     benchmarks/gpu_edge.sh OUTDIR [PYTHON]
#
# For a GPU box, beamline or cluster, with ptychoflow importable by PYTHON (default
# python3): `pip install .[edge]` plus torch with CUDA. A box without network access takes
# wheels carried in: `pip download --no-deps --only-binary=:all: -d wheels p4p pvxslibs
# epicscorelibs setuptools-dso ply nose2` where pip works (with --python-version and
# --platform of the box), then `pip install --no-index --no-deps --target SITE wheels/*.whl
# .` there and PYTHONPATH=SITE.
#
# Four measurements, one after another, each under its own time limit so one that hangs
# leaves the others their time; each prints one JSON line to OUTDIR/<name>.json, its log
# beside it. Lanes first (the configuration meant for 20 kHz), then one edge process:
#   bench-cuda-lanes ptychoflow bench edge: PyTorch engine on CUDA (fp16, batch 256), a
#                    20 kHz source scattering its frames over LANES PVs (default 4), the
#                    edge running one lane process per PV, stitching in its own process
#   ceiling-lanes    the I/O ceiling (a do-nothing model) at 20 kHz, same set-up
#   bench-cuda       as bench-cuda-lanes with one input PV and one edge process
#   ceiling-stitch   the I/O ceiling at 10 and 20 kHz, one edge process
# The JSON holds delivered frames/s, frames lost (every one counted in Edge:Dropped_RBV)
# and the edge's CPU per frame thread by thread (edge_threads_us_per_frame), which says
# whether the GPU or the edge's own per-frame work bounds the stream.
set -u
out=${1:?usage: benchmarks/gpu_edge.sh OUTDIR [PYTHON]}
py=${2:-python3}
limit=${GPU_EDGE_LIMIT_S:-200}
frames=${GPU_EDGE_FRAMES:-20000}
device=${GPU_EDGE_DEVICE:-cuda}  # cpu: a dry run of this script on any box
lanes=${GPU_EDGE_LANES:-4}
# which measurements to run, in order (a device's time is short: four at 130 s fit in 10 min)
steps=${GPU_EDGE_STEPS:-bench-cuda-lanes ceiling-lanes bench-cuda ceiling-stitch}
mkdir -p "$out"
out=$(cd "$out" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
# run from OUTDIR: in the project root, `python -m` would import the source folder
# ptychoflow/ (without edge/) in place of the installed package
cd "$out"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    >"$out/gpu.txt" 2>&1 || echo "no nvidia-smi" >"$out/gpu.txt"
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' \
    >>"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"

step() {  # step NAME COMMAND...: one measurement, its last line kept as NAME.json
    local name=$1
    shift
    case " $steps " in *" $name "*) ;; *) echo "== $name: skipped (GPU_EDGE_STEPS)"; return ;; esac
    echo "== $name: $*"
    # SIGINT, not TERM: Python then runs its finally blocks, which stop the source and edge
    timeout -s INT -k 20 "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    grep '^{' "$out/$name.log" >"$out/$name.json"
    cat "$out/$name.json"
    [ "$rc" -eq 0 ] || { echo "$name: exit $rc (log: $out/$name.log)"; tail -5 "$out/$name.log"; }
}

gpu=(--batch-size 256 --input-queue 1024 --frames "$frames" --stitch-process)
step bench-cuda-lanes "$py" -m ptychoflow.cli bench edge --json --engine torch \
    --device "$device" --rate 20000 --lanes "$lanes" --no-baseline "${gpu[@]}"
step ceiling-lanes "$py" "$here/edge_io_ceiling.py" --rates 20000 --lanes "$lanes" "${gpu[@]}"
step bench-cuda "$py" -m ptychoflow.cli bench edge --json --engine torch --device "$device" \
    --rate 20000 "${gpu[@]}"
step ceiling-stitch "$py" "$here/edge_io_ceiling.py" --rates 10000 20000 "${gpu[@]}"
