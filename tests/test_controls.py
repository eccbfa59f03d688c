"""Control baselines (SFT, output KL, hidden-state distillation), their loop and the registry."""

import copy
import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from semalign_core.baselines import controls
from semalign_core.baselines.controls import HiddenDistillConfig, OutputKLConfig, SFTConfig
from semalign_core.data import load_transfer
from semalign_core.errors import IncompatibleModelsError, InvalidParameterError
from semalign_core.lm import semantics
from semalign_core.models.registry import load_model
from semalign_core.models.tiny import tiny_model
from semalign_core.semalign.result import TransferResult
from semalign_core.semalign.transfer import transfer
from semalign_core.transfer.registry import CONFIGS, METHODS, make_config, run_method

COMMON = dict(epochs=1, batch_size=2, micro_batch_size=2, max_length=40, progress=False)
SMOKE = {
    "semalign": dict(steps_per_stage=1, batch_size=2, max_length=40, progress=False),
    "seeking": dict(COMMON, lr=1e-3),
    "laten": dict(max_length=40, align_per_step=3, progress=False),
    "sft": dict(COMMON, lr=1e-3),
    "output_kl": dict(COMMON, lr=1e-3),
    "hidden_distill": dict(COMMON, lr=1e-3),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair(tiny_transfer_pair):
    return tiny_transfer_pair(n_train=4)


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# --------------------------------------------------------------------------- registry


def test_registry_entry_points_share_semaligns_signature():
    import inspect

    ref = list(inspect.signature(transfer).parameters)
    assert (
        set(METHODS)
        == set(CONFIGS)
        == {"semalign", "seeking", "laten", "sft", "output_kl", "hidden_distill"}
    )
    for name, fn in METHODS.items():
        assert list(inspect.signature(fn).parameters)[: len(ref)] == ref, name
    assert METHODS["semalign"] is transfer


def test_make_config_and_errors():
    assert make_config("sft", None, lr=1e-4).lr == 1e-4
    assert make_config("laten", {"top_fraction": 0.2}).top_fraction == 0.2
    cfg = SFTConfig(epochs=2)
    assert make_config("sft", cfg, epochs=3).epochs == 3 and cfg.epochs == 2
    with pytest.raises(InvalidParameterError, match="unknown method"):
        make_config("lora-magic")
    with pytest.raises(InvalidParameterError, match="no field"):
        make_config("sft", {"tau": 1.0})
    with pytest.raises(InvalidParameterError):
        make_config("output_kl", SFTConfig())
    with pytest.raises(InvalidParameterError):
        SFTConfig(trainable="head")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_refuses_incompatible_pairs(pair, name):
    src, tgt, tok, train, extract = pair
    with pytest.raises(IncompatibleModelsError, match="deeper"):
        run_method(name, tgt, src, train, extract, tokenizer=tok, **SMOKE[name])
    other = tiny_model("llama", vocab_size=128, num_layers=2, hidden_size=32)
    with pytest.raises(IncompatibleModelsError, match="vocabularies differ"):
        run_method(name, src, other, train, extract, tokenizer=tok, **SMOKE[name])


@pytest.mark.parametrize("name", ["sft", "output_kl", "hidden_distill"])
def test_controls_are_deterministic_and_record_costs(pair, name):
    src, tgt, tok, train, extract = pair
    a = run_method(name, src, copy.deepcopy(tgt), train, extract, tokenizer=tok, **SMOKE[name])
    b = run_method(name, src, copy.deepcopy(tgt), train, extract, tokenizer=tok, **SMOKE[name])
    assert isinstance(a, TransferResult) and a.config["method"] == name
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(p, q), n
    rec = a.stages[0]
    assert rec["steps"] == 2 and len(rec["losses"]) == 2 and rec["losses"] == b.stages[0]["losses"]
    for key in ("wall_s", "peak_rss_mb", "tokens", "flops"):
        assert a.cost[key] > 0, key
    changed = {n for n, p in params(a.model).items() if not torch.equal(p, params(tgt)[n])}
    trained = (".layers." in n or n == "model.norm.weight" for n in changed)  # trainable="layers"
    assert changed and all(trained)


# --------------------------------------------------------------------------- methods


def test_sft_lora_merges_and_full_trains_embeddings(pair):
    src, tgt, tok, train, extract = pair
    res = controls.sft(
        src, copy.deepcopy(tgt), train, extract, SFTConfig(**SMOKE["sft"], trainable="lora"), tok
    )
    assert set(params(res.model)) == set(params(tgt))
    assert all(type(m) is nn.Linear for n, m in res.model.named_modules() if n.endswith("_proj"))
    before, after = params(tgt), params(res.model)
    assert not torch.equal(
        before["model.layers.0.mlp.down_proj.weight"], after["model.layers.0.mlp.down_proj.weight"]
    )
    assert torch.equal(
        before["model.layers.0.input_layernorm.weight"],
        after["model.layers.0.input_layernorm.weight"],
    )
    res = controls.sft(
        src, copy.deepcopy(tgt), train, extract, SFTConfig(**SMOKE["sft"], trainable="full"), tok
    )
    assert not torch.equal(
        before["model.embed_tokens.weight"], params(res.model)["model.embed_tokens.weight"]
    )


def test_lora_adapts_every_linear_layer_of_the_blocks(pair):
    _, tgt, *_ = pair
    model = copy.deepcopy(tgt)
    block_linears = {  # reference: every nn.Linear under the decoder blocks, by full name
        n for n, m in model.named_modules() if ".layers." in n and isinstance(m, nn.Linear)
    }
    peft_model, params_ = controls.add_lora(model, r=4, alpha=8)
    from peft.tuners.lora import LoraLayer

    adapted = {n for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert adapted == block_linears and len(adapted) == 7 * 4  # q k v o gate up down, 4 layers
    assert params_ and all(
        "lora_" in n for n, p in peft_model.named_parameters() if p.requires_grad
    )


def test_sft_lora_on_gpt2_adapts_its_conv1d_layers(pair):
    """GPT-2's blocks hold transformers' Conv1D (weights stored in × out), not nn.Linear."""
    from transformers.pytorch_utils import Conv1D

    *_, tok, train, extract = pair
    d, ff, r = 48, 96, 4
    src = tiny_model("gpt2", vocab_size=49152, num_layers=6, hidden_size=64, intermediate_size=128)
    tgt = tiny_model("gpt2", vocab_size=49152, num_layers=4, hidden_size=d, intermediate_size=ff)
    # c_attn d→3d, attn.c_proj d→d, c_fc d→ff, mlp.c_proj ff→d: r · (in + out) each
    hand = r * ((d + 3 * d) + (d + d) + (d + ff) + (ff + d))
    assert controls.spec_for(tgt, "lora", r).lora_params == {k: hand for k in range(4)}
    cfg = SFTConfig(**SMOKE["sft"], trainable="lora", lora_r=r)
    res = controls.sft(src, copy.deepcopy(tgt), train, extract, cfg, tok)
    convs = [n for n, m in res.model.named_modules() if isinstance(m, Conv1D)]
    assert len(convs) == 4 * 4 and set(params(res.model)) == set(params(tgt))  # merged back
    before, after = params(tgt), params(res.model)
    assert all(not torch.equal(before[f"{n}.weight"], after[f"{n}.weight"]) for n in convs)
    assert torch.equal(before["transformer.wte.weight"], after["transformer.wte.weight"])


def test_micro_batching_does_not_change_the_update(pair):
    src, tgt, tok, train, extract = pair
    cfg = SFTConfig(**dict(SMOKE["sft"], batch_size=4, micro_batch_size=4))
    a = controls.sft(src, copy.deepcopy(tgt), train, extract, cfg, tok)
    b = controls.sft(src, copy.deepcopy(tgt), train, extract, replace(cfg, micro_batch_size=1), tok)
    assert a.stages[0]["losses"] == pytest.approx(b.stages[0]["losses"], rel=1e-5)
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=n)


def test_output_kl_matches_semantics_and_falls(pair):
    src, tgt, tok, train, extract = pair
    cfg = OutputKLConfig(
        **dict(SMOKE["output_kl"], epochs=4, batch_size=4, micro_batch_size=4), tau=2.0
    )
    batch = controls.collate(controls.tokenize(train, tok, cfg), controls.pad_id(tok))
    with torch.no_grad():
        teacher, rows, _ = controls.supervised_logits(src, batch)
        student, _, _ = controls.supervised_logits(tgt, batch)
    per_example = []
    for b in range(4):  # per-example means, then the batch mean (the loop's weighting)
        sel = rows == b
        per_example.append(semantics.output_kl(teacher[sel], student[sel], tau=2.0))
    res = controls.output_kl(src, copy.deepcopy(tgt), train, extract, cfg, tok)
    kl = res.stages[0]["parts"]["kl"]
    assert kl[0] == pytest.approx(float(torch.stack(per_example).mean()), rel=1e-4)
    assert kl[-1] < kl[0]


def test_hidden_distill_learns_maps_jointly(pair):
    src, tgt, tok, train, extract = pair
    cfg = HiddenDistillConfig(
        **dict(SMOKE["hidden_distill"], epochs=4, batch_size=4, micro_batch_size=4), ce_weight=0.5
    )
    res = controls.hidden_distill(src, copy.deepcopy(tgt), train, extract, cfg, tok)
    rec = res.stages[0]
    assert res.pairing.strategy == "uniform" and res.pairing.source_layers == [2, 3, 5, 6]
    assert set(rec["maps"]) == {f"{j}.weight" for j in range(1, 5)}
    assert rec["maps"]["1.weight"].shape == (64, 48)
    assert rec["parts"]["hidden"][-1] < rec["parts"]["hidden"][0] and len(rec["parts"]["ce"]) == 4
    fresh = controls.hidden_maps(res.pairing, 48, 64, cfg.seed)
    assert not torch.equal(fresh["1"].weight, rec["maps"]["1.weight"])  # the maps trained


# --------------------------------------------------------------------------- cpu pair, end to end


@pytest.fixture(scope="module")
def cpu_pair():
    """SmolLM2-135M and its derived 24-layer student: the cached one, else the same shapes pruned
    in memory without healing (as bench/bench_semalign.py; costs depend on shapes only)."""
    from semalign_core.models.registry import REGISTRY, cached_dir

    src = load_model("smollm2-135m-instruct", verbose=False)
    spec = REGISTRY["smollm2-derived-24l"]
    if (cached_dir(spec.name) / "semalign_derived.json").exists():
        return src, load_model(spec.name, verbose=False).model
    from semalign_core.data.corpora import TRAIN_CORPORA, token_blocks
    from semalign_core.models.derive import DeriveConfig, measure_importance, prune

    calib = token_blocks(src.tokenizer, TRAIN_CORPORA, 128, 4, seed=0)
    return src, prune(src.model, measure_importance(src.model, calib), DeriveConfig(**spec.derive))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["seeking", "laten", "sft", "output_kl", "hidden_distill"])
def test_each_method_runs_on_the_cpu_pair(cpu_pair, name):
    src, target = cpu_pair[0], copy.deepcopy(cpu_pair[1])
    train = load_transfer("gsm", "align", limit=4).records
    extract = load_transfer("gsm", "extract", limit=2).records
    budget = {"laten": dict(max_length=128, align_per_step=3, micro_batch_size=2, progress=False)}
    kw = budget.get(
        name,
        dict(
            epochs=1, batch_size=2, micro_batch_size=2, max_length=128, max_steps=2, progress=False
        ),
    )
    res = run_method(name, src.model, target, train, extract, tokenizer=src.tokenizer, **kw)
    assert res.cost["wall_s"] > 0 and res.cost["flops"] > 0
    losses = res.stages[-1]["losses"]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    json.dumps(res.cost)  # a results record can hold it
