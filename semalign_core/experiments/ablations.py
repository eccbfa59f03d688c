"""SemAlign ablations on the informative setting of Table 2 (fine-tuned teacher → target, SST-2).

The paper names ablations without publishing their results (attribution granularity, pairing
strategy, strength of semantic decomposition; v2/ACL add the objective and the frontier schedule).
Each axis of :data:`AXES` changes one :class:`~semalign_core.semalign.transfer.SemAlignConfig` field around
the default run of Table 2 (the ``semalign`` row of ``notebooks/04``), one axis at a time:

=============  ===========================  ==============================================
axis           field                        variants (default first)
=============  ===========================  ==============================================
objective      ``objective``                acl, v2, v1
pairing        ``pairing``                  attributed, floor, uniform, interpolate
granularity    ``attribution_granularity``  channel, token, example
strength       ``layer_weight``             1 (default), 0 (no latent alignment: output KL
                                            at the last stage only), 2
frontier       ``steps_per_stage``          the budget's, half of it, twice it
=============  ===========================  ==============================================

"Strength of semantic decomposition" is read as the weight of the layer term (the supervision
that goes through decomposition and recomposition) against the output KL; 0 removes it.

Each variant is one record per seed, ``results/semalign_ablations/<profile>/<axis>-<value>__
<task>__seed<seed>.json`` (the default is Table 2's own record, reused when notebook 04 made it).
Variants that only change how the source layers are chosen (pairing, granularity) first compute
their pairing; when it equals the default run's, training would be identical, so the default's
result is recorded for them (marked ``same_plan``) instead of training again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from semalign_core.errors import InvalidParameterError
from semalign_core.profiles import Profile

EXPERIMENT = "semalign_ablations"
TASK = "sst2"
SETTING = "finetuned"
# Fewer seeds at cpu keep the notebook near 5 minutes on 2 cores (the caption says so).
ABLATION_SEEDS: dict[str, tuple[int, ...]] = {"smoke": (0,), "cpu": (0,), "gpu-small": (0, 1, 2), "paper": (0, 1, 2)}
PAIRING_ONLY = ("pairing", "attribution_granularity", "attribution_aggregate", "attribution_method", "window")


@dataclass(frozen=True)
class Variant:
    """One ablation variant: an axis, a label for its value, and the SemAlignConfig fields it sets."""

    axis: str
    value: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def is_default(self) -> bool:
        return not self.overrides

    def label(self) -> dict[str, str]:
        return {"axis": self.axis, "value": self.value}

    def run(self, seed: int) -> str:
        return f"{self.axis}-{self.value}__{TASK}__seed{seed}"


AXES: dict[str, tuple[str, tuple[Any, ...]]] = {
    "objective": ("objective", ("acl", "v2", "v1")),
    "pairing": ("pairing", ("attributed", "floor", "uniform", "interpolate")),
    "granularity": ("attribution_granularity", ("channel", "token", "example")),
    "strength": ("layer_weight", (1.0, 0.0, 2.0)),
    "frontier": ("steps_per_stage", ()),  # from the budget: the default, half of it, twice it
}


def default_config(prof: Profile, seed: int = 0):
    """The SemAlign config of Table 2's ``semalign`` cell at this profile."""
    from semalign_core.experiments import transfer_tables as transfer_table
    from semalign_core.transfer.registry import make_config

    budget = transfer_table.transfer_budget(prof, TASK)
    return make_config("semalign", None, **budget.method_overrides("semalign", seed))


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def variants(prof: Profile, axes: Sequence[str] | None = None) -> list[Variant]:
    """The default, then every non-default value of each axis (values equal to the default dropped)."""
    base = default_config(prof)
    out = [Variant("default", "default")]
    for axis in check_axes(axes):
        name, values = AXES[axis]
        if axis == "frontier":
            k = base.steps_per_stage
            values = (k, max(1, k // 2), 2 * k)
        seen = {getattr(base, name)}
        for value in values:
            if value in seen:
                continue
            seen.add(value)
            out.append(Variant(axis, _label(value), {name: value}))
    return out


def check_axes(axes: Sequence[str] | None) -> tuple[str, ...]:
    from semalign_core.experiments.notebook import check_list

    return check_list("axes", axes, AXES)


def check_parameters(axes: Sequence[str] | None, seeds: Sequence[int] | None, profile: str):
    """(axes, seeds): one-line InvalidParameterError on a bad value; seeds None: the profile's."""
    axes = check_axes(axes)
    seeds = ABLATION_SEEDS.get(profile, (0,)) if seeds is None else seeds
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (list, tuple)) or not seeds or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise InvalidParameterError(f"parameter seeds={seeds!r} must be None or a non-empty list of integers >= 0")
    return axes, tuple(dict.fromkeys(seeds))


# --------------------------------------------------------------------------- running


def preview_plan(prof: Profile, overrides: dict[str, Any], seed: int) -> dict[str, list[list[float]]]:
    """The interpolation plan a variant would train with (attribution only, no training)."""
    import torch

    from semalign_core.lm import surgery
    from semalign_core.experiments import transfer_tables as transfer_table
    from semalign_core.semalign.attribution import interpolation_plan, layer_attribution, pair_layers
    from semalign_core.transfer.registry import make_config
    from semalign_core.models.registry import load_tokenizer
    from semalign_core.semalign.transfer import sft_batches
    from semalign_core.experiments.teachers import load_teacher

    cfg = make_config("semalign", default_config(prof, seed), **overrides)
    budget = transfer_table.transfer_budget(prof, TASK)
    n_target = _target_layers(prof)
    source, _ = load_teacher(prof.name, TASK, dtype=prof.dtype)
    scores = None
    if cfg.pairing == "attributed":
        _, extract = transfer_table.transfer_data(TASK, budget, seed)
        tok = load_tokenizer(prof.semalign_target)
        batches = sft_batches(extract.records, tok, cfg.batch_size, cfg.max_length, cfg.prompt_style, cfg.loss_on)
        torch.manual_seed(cfg.seed)
        scores = layer_attribution(source.model, batches, cfg.attribution_aggregate, cfg.attribution_method,
                                   cfg.attribution_granularity).tolist()
    pairing = pair_layers(scores, n_target, cfg.pairing, cfg.window, n_source=surgery.num_layers(source.model))
    return transfer_table.plan_json(interpolation_plan(pairing))


def _target_layers(prof: Profile) -> int:
    """Depth of the profile's target from its registry entry (no weights are loaded)."""
    from semalign_core.models.registry import REGISTRY, cached_dir, hub_offline

    spec = REGISTRY[prof.semalign_target]
    if spec.kind == "tiny":
        return int(spec.tiny["num_layers"])
    if spec.kind == "derived":
        return int(spec.derive["num_layers"])
    from transformers import AutoConfig

    if spec.kind == "wheel":
        return int(AutoConfig.from_pretrained(cached_dir(spec.name)).num_hidden_layers)
    return int(AutoConfig.from_pretrained(spec.hub_id, local_files_only=hub_offline()).num_hidden_layers)


def _reuse_default(prof: Profile, variant: Variant, seed: int, default: dict, config: dict) -> dict:
    """Record the default's result for a variant that trains with the same plan (identical training)."""
    from semalign_core.records import load_valid_record, provenance, write_record

    metrics = {**default["metrics"], "same_plan": True,
               "reused_from": f"{default['experiment']}/{default['run']}"}
    write_record(EXPERIMENT, prof.name, variant.run(seed), config, metrics=metrics,
                 cost={"transfer": None, "eval_wall_s": 0.0, "note": "same plan as the default: not retrained"},
                 prov=provenance(seed=seed, data_sources=default["provenance"].get("data_sha256", {}),
                                 dtype=prof.dtype),
                 method="semalign", task=TASK, seed=seed, setting=SETTING, teacher=default.get("teacher"),
                 ablation=variant.label())
    return load_valid_record(EXPERIMENT, prof.name, variant.run(seed), config)


def run_variant(prof: Profile, variant: Variant, seed: int, force: bool = False, default: dict | None = None) -> dict:
    """The record of one variant and seed. The default is Table 2's ``semalign`` cell (``default``:
    its record, when the caller already has it)."""
    from semalign_core.experiments import transfer_tables as transfer_table
    from semalign_core.records import load_valid_record

    if default is None:
        default = transfer_table.run_cell(prof, "semalign", TASK, seed, force, setting=SETTING)
    if variant.is_default:
        return default
    budget = transfer_table.transfer_budget(prof, TASK)
    config = transfer_table.cell_config(prof, "semalign", TASK, seed, budget, SETTING,
                                        default.get("teacher"), variant.overrides)
    config["ablation"] = variant.label()
    if not force and (record := load_valid_record(EXPERIMENT, prof.name, variant.run(seed), config)):
        return record
    if set(variant.overrides) <= set(PAIRING_ONLY):
        plan = preview_plan(prof, variant.overrides, seed)
        if plan == (default["metrics"].get("transfer") or {}).get("plan"):
            return _reuse_default(prof, variant, seed, default, config)
    return transfer_table.run_cell(prof, "semalign", TASK, seed, force, budget, SETTING, default.get("teacher"),
                                   method_config=variant.overrides, experiment=EXPERIMENT, run=variant.run(seed),
                                   config_extra={"ablation": variant.label()})


def run_ablations(prof: Profile, axes: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                  force: bool = False, verbose: bool = True) -> list[dict]:
    """Every variant × seed (records reused when valid), plus Table 2's teacher and target rows."""
    import time

    from semalign_core.experiments import transfer_tables as transfer_table

    axes, seeds = check_parameters(axes, seeds, prof.name)
    out = [transfer_table.run_cell(prof, row, TASK, seeds[0], force, setting=SETTING)
           for row in transfer_table.get_setting(SETTING).reference_rows]
    defaults: dict[int, dict] = {}
    for variant in variants(prof, axes):  # the default comes first: it is computed once per seed
        for seed in seeds:
            t0 = time.perf_counter()
            record = run_variant(prof, variant, seed, force, defaults.get(seed))
            defaults.setdefault(seed, record)
            if verbose:
                m = record["metrics"]
                same = " (same plan as default: not retrained)" if m.get("same_plan") else ""
                print(f"{variant.axis:>11} {variant.value:>11} seed {seed}: acc = {100 * m['value']:.1f} "
                      f"(n={m['n']}){same} [{time.perf_counter() - t0:.1f} s]", flush=True)
            out.append(record)
    return out


# --------------------------------------------------------------------------- table and figure


def _records(profile: str) -> list[dict]:
    import json

    from semalign_core.paths import results_dir

    out = []
    for path in sorted((results_dir() / EXPERIMENT / profile).glob(f"*__{TASK}__seed*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def _stats(values: list[float]) -> tuple[float, float | None]:
    pct = [100 * v for v in values]
    mean = sum(pct) / len(pct)
    std = math.sqrt(sum((p - mean) ** 2 for p in pct) / (len(pct) - 1)) if len(pct) > 1 else None
    return mean, std


def rows(profile: str) -> list[dict[str, Any]]:
    """One row per variant with records: axis, value, mean/std (%) over seeds, n, seeds, Δ vs default,
    whether its plan equals the default's. The default comes from Table 2's records."""
    from semalign_core.experiments import transfer_tables as transfer_table

    t2 = [r for r in transfer_table.load_records(profile, SETTING) if r["task"] == TASK]
    default = [r for r in t2 if r["method"] == "semalign"]
    ablations = _records(profile)
    if not ablations:
        return []
    seeds = sorted({r["seed"] for r in ablations})
    default = [r for r in default if r["seed"] in seeds]
    groups: dict[tuple[str, str], list[dict]] = {}
    if default:
        groups[("default", "default")] = default
    for r in ablations:
        groups.setdefault((r["ablation"]["axis"], r["ablation"]["value"]), []).append(r)
    base = _stats([r["metrics"]["value"] for r in default])[0] if default else None
    from semalign_core.profiles import get_profile

    order = {(v.axis, v.value): i for i, v in enumerate(variants(get_profile(profile)))}
    out = []
    for (axis, value), recs in sorted(groups.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
        mean, std = _stats([r["metrics"]["value"] for r in recs])
        out.append({"axis": axis, "value": value, "mean": mean, "std": std,
                    "n": sorted({r["metrics"]["n"] for r in recs}), "seeds": sorted(r["seed"] for r in recs),
                    "delta": None if base is None else mean - base,
                    "same_plan": all(r["metrics"].get("same_plan") for r in recs) and axis != "default"})
    return out


def _references(profile: str) -> dict[str, float]:
    from semalign_core.experiments import transfer_tables as transfer_table

    rows_ = transfer_table.get_setting(SETTING).reference_rows  # teacher, target
    found = {r["method"]: 100 * r["metrics"]["value"] for r in transfer_table.load_records(profile, SETTING)
             if r["task"] == TASK and r["method"] in rows_ and r["metrics"].get("value") is not None}
    return {row: found[row] for row in rows_ if row in found}


def caption(profile: str) -> str:
    data = rows(profile)
    seeds = sorted({s for r in data for s in r["seeds"]})
    refs = _references(profile)
    ref_text = "; ".join(f"{k} {v:.1f}" for k, v in refs.items())
    few = " (fewer seeds than Table 2, to fit the profile's time budget)" if len(seeds) < 3 else ""
    from semalign_core.profiles import get_profile

    base = default_config(get_profile(profile))
    default = ", ".join(f"{axis} {_label(getattr(base, name))}" for axis, (name, _) in AXES.items())
    return (f"SemAlign ablations, profile `{profile}`: fine-tuned teacher → target on SST-2 (accuracy %, held-out "
            f"dev sentences, n per seed as shown); seeds {seeds}{few}; one axis at a time around the default "
            f"(Table 2's SemAlign run: {default}); Δ = points vs the default; `=` marks variants whose layer plan "
            f"equals the default's (identical training, not retrained). Reference: {ref_text or 'n/a'}; chance 50.0")


def table(profile: str):
    """The ablation table of ``profile`` as a DataFrame (``attrs['caption']``)."""
    import pandas as pd

    data = rows(profile)

    def cell(r):
        spread = "" if r["std"] is None else f" ± {r['std']:.1f}"
        seeds = f"{len(r['seeds'])} seed{'s' * (len(r['seeds']) > 1)}"
        return f"{r['mean']:.1f}{spread} (n={'/'.join(map(str, r['n']))}, {seeds})"

    frame = pd.DataFrame({"SST-2 acc": [cell(r) for r in data],
                          "Δ vs default": ["" if r["axis"] == "default" or r["delta"] is None else f"{r['delta']:+.1f}"
                                           for r in data],
                          "plan": ["=" if r["same_plan"] else "" for r in data]},
                         index=pd.MultiIndex.from_tuples([(r["axis"], r["value"]) for r in data],
                                                         names=["axis", "variant"]))
    frame.attrs["caption"] = caption(profile)
    frame.attrs["profile"] = profile
    return frame


def figure(profile: str):
    """Horizontal bars per variant (mean ± std over seeds), grouped by axis; teacher, target and
    chance as vertical lines."""
    import matplotlib
    import numpy as np

    from semalign_core.report import plots

    data = rows(profile)
    refs = _references(profile)
    with matplotlib.style.context(plots.STYLE):
        fig = plots._figure(7.0, 0.32 * len(data) + 1.6)
        ax = fig.subplots()
        y = np.arange(len(data))[::-1]
        colors = ["0.45" if r["axis"] == "default" else ("0.75" if r["same_plan"] else plots.OUTPUT_COLOR)
                  for r in data]
        spread = [r["std"] or 0.0 for r in data]
        ax.barh(y, [r["mean"] for r in data], xerr=spread if any(spread) else None, color=colors, height=0.7,
                error_kw={"elinewidth": 0.8, "capsize": 2})
        ax.set_yticks(y, [f"{r['axis']}: {r['value']}" for r in data], fontsize=8)
        for name, value, style in (("teacher", refs.get("teacher"), "--"), ("target", refs.get("target"), ":"),
                                   ("chance", 50.0, "-")):
            if value is not None:
                ax.axvline(value, color="0.2", linestyle=style, linewidth=0.9, label=f"{name} {value:.1f}")
        ax.set_xlim(0, 100)
        ax.set_xlabel("SST-2 accuracy (%)")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(axis="x", alpha=0.3)
        seeds = sorted({s for r in data for s in r["seeds"]})
        ax.set_title(f"SemAlign ablations (profile {profile}, seeds {seeds}); grey: default, light: same plan",
                     fontsize=9)
        fig.tight_layout()
    return fig


PROFILE_PREFERENCE = ("paper", "gpu-small", "cpu", "smoke")


def ablation_markdown() -> str | None:
    """Every profile with ablation records: caption and table (None when there are none)."""
    from semalign_core.report.build import _markdown

    out = ["# SemAlign ablations (not published in the paper)\n\n",
           "One SemAlign config field changed at a time around Table 2's default run "
           "(`notebooks/05_semalign_ablations.ipynb`, `semalign_core/ablations.py`).\n"]
    found = False
    for profile in PROFILE_PREFERENCE:
        if not rows(profile):
            continue
        found = True
        frame = table(profile)
        out.append(f"\n## Reproduced: profile `{profile}`\n\n{frame.attrs['caption']}.\n\n")
        out.append(_markdown(["axis", "variant", *frame.columns],
                             [[a, v, *row] for (a, v), row in zip(frame.index, frame.values.tolist())]))
    return "".join(out) if found else None


def ablation_figures(out_dir: Path) -> list[Path]:
    """``semalign_ablations.md`` (every profile) and ``semalign_ablations.png`` (the largest profile
    with records); nothing when there are no ablation records."""
    from semalign_core.report import plots

    from semalign_core.report.build import save_markdown

    written = save_markdown(ablation_markdown(), Path(out_dir) / "semalign_ablations.md")
    if not written:
        return []
    profile = next(p for p in PROFILE_PREFERENCE if rows(p))
    return [*written, plots.save_png(figure(profile), Path(out_dir) / "semalign_ablations.png")]


__all__ = ["ABLATION_SEEDS", "AXES", "EXPERIMENT", "Variant", "ablation_figures", "ablation_markdown", "caption",
           "check_parameters", "default_config", "figure", "preview_plan", "rows", "run_ablations", "run_variant",
           "table", "variants"]
