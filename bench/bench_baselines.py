"""Wall time and peak memory of each baseline on the cpu pair (SmolLM2-135M -> derived 24-layer),
tiny budget."""

import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

# offline unless told otherwise: huggingface_hub reads HF_HUB_OFFLINE when it is imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from semalign_core.costs import current_rss_mb  # noqa: E402
from semalign_core.data import load_transfer  # noqa: E402
from semalign_core.models.registry import REGISTRY, cached_dir, load_model  # noqa: E402
from semalign_core.paths import results_dir  # noqa: E402
from semalign_core.records import package_versions, write_json_atomic  # noqa: E402
from semalign_core.transfer.registry import run_method  # noqa: E402

torch.set_num_threads(int(os.environ.get("THREADS", "1")))

src = load_model("smollm2-135m-instruct", verbose=False)
spec = REGISTRY["smollm2-derived-24l"]
if (cached_dir(spec.name) / "semalign_derived.json").exists():
    tgt, tgt_name = load_model(spec.name, verbose=False).model, spec.name
else:
    from semalign_core.data.corpora import TRAIN_CORPORA, token_blocks
    from semalign_core.models.derive import DeriveConfig, measure_importance, prune

    calib = token_blocks(src.tokenizer, TRAIN_CORPORA, 128, 4, seed=0)
    tgt = prune(src.model, measure_importance(src.model, calib), DeriveConfig(**spec.derive))
    tgt_name = f"{spec.name} (pruned in memory, not healed)"
train = load_transfer("gsm", "align", limit=8, seed=0).records
extract = load_transfer("gsm", "extract", limit=4, seed=0).records
common = dict(epochs=1, batch_size=4, micro_batch_size=4, max_length=256, progress=False)
budgets = {
    "sft": common,
    "output_kl": common,
    "hidden_distill": common,
    "seeking": common,
    "laten": dict(
        max_length=256, align_per_step=3, micro_batch_size=4, max_steps=2, progress=False
    ),
}
names = sys.argv[1:] or list(budgets)
out = {
    "model_pair": ["smollm2-135m-instruct", tgt_name],
    "task": "gsm",
    "train_records": len(train),
    "attribution_records": len(extract),
    "dtype": "float32",
    "threads": torch.get_num_threads(),
    "machine": platform.processor() or platform.machine(),
    "cpus": os.cpu_count(),
    "load_before": os.getloadavg(),
    "packages": package_versions(),
    "methods": {},
}
baseline_rss = current_rss_mb()
for name in names:
    target = copy.deepcopy(tgt)
    t = time.perf_counter()
    res = run_method(
        name, src.model, target, train, extract, tokenizer=src.tokenizer, **budgets[name]
    )
    wall = time.perf_counter() - t
    steps = res.stages[-1]
    out["methods"][name] = {
        "budget": budgets[name],
        "wall_s": wall,
        "peak_rss_mb": res.cost["peak_rss_mb"],
        "rss_before_mb": baseline_rss,
        "tokens": res.cost["tokens"],
        "real_tokens": res.cost["real_tokens"],
        "flops": res.cost["flops"],
        "train_steps": res.cost.get("train_steps"),
        "stage_wall_s": {str(s["stage"]): s["wall_s"] for s in res.stages},
        "mean_step_s": sum(steps["step_s"]) / len(steps["step_s"]),
        "losses": steps["losses"],
        "load_after": os.getloadavg(),
    }
    print(
        name,
        json.dumps({k: v for k, v in out["methods"][name].items() if k not in ("budget",)}),
        flush=True,
    )
    del target, res

path = results_dir() / "bench" / "baselines_cpu.json"
write_json_atomic(Path(path), out)
print("wrote", path)
