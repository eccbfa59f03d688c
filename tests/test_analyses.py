"""Analysis experiments at the smoke profile: SemAlign Fig. 2 / Figs. 4-6 and SALF deviation/gain.

The record checks and the figure checks read what both notebooks wrote in the session's smoke
run (``smoke_reproduction``); parameter checks run in-process. On the tiny random models output- and
input-side bases both reconstruct almost perfectly (random embeddings are isotropic), so the
paper's ordering is checked on SmolLM2 only (slow).
"""

from __future__ import annotations

import json

import pytest
import torch

from semalign_core import salf
from semalign_core.errors import InvalidParameterError
from semalign_core.experiments import budgets, salf_analysis, semalign_analyses
from semalign_core.experiments.model_pool import ModelPool
from semalign_core.lm import semantics
from semalign_core.models.tiny import tiny_model
from semalign_core.profiles import get_profile
from semalign_core.report import analysis_figures as report
from semalign_core.report import plots

NOTEBOOKS = ("01_semalign_analyses", "02_salf_deviation_gain")
TASKS = ("sst2", "agnews", "trec")  # notebook 02's default tasks


@pytest.fixture(scope="module")
def smoke_results(smoke_reproduction):
    return smoke_reproduction.results


def _read(results, *parts):
    return json.loads(results.joinpath(*parts).read_text())


def test_notebooks_show_their_figures_inline(smoke_reproduction):
    for nb in NOTEBOOKS:  # errors and machine paths: test_notebooks, for every notebook
        assert any("image/png" in o.get("data", {}) for o in smoke_reproduction.outputs(nb)), nb


def test_fidelity_record_shapes_and_ranges(smoke_results):
    rec = _read(smoke_results, "semalign_analyses", "smoke", "fidelity.json")
    m = rec["metrics"]
    budget = budgets.SEMALIGN_ANALYSIS_BUDGETS["smoke"]
    assert m["n_tokens"] > 0 and m["n_examples"] == budget.n_examples
    for role, layers in (("source", 6), ("target", 4)):
        info = m["models"][role]
        assert info["layers"] == layers
        for key in ("output_side", "input_side", "dual", "gain_folded"):
            assert len(info[key]) == len(info[f"{key}_std"]) == layers
            assert all(-1.0 <= v <= 1.0 for v in info[key]), info[key]
            assert all(v >= 0.0 for v in info[f"{key}_std"])
        assert all(v > 1 - 1e-5 for v in info["dual"]), info["dual"]  # exact on its own bases
    assert rec["provenance"]["data_sha256"] and rec["config"]["measure_split"] == "train"


def test_cka_record_shapes_and_diagonal(smoke_results):
    m = _read(smoke_results, "semalign_analyses", "smoke", "cka.json")["metrics"]
    mats = {k: torch.tensor(v, dtype=torch.float64) for k, v in m["matrices"].items()}
    for when in ("before", "after"):
        tt, st = mats[f"target_target_{when}"], mats[f"source_target_{when}"]
        assert tt.shape == (4, 4) and st.shape == (6, 4)
        assert torch.allclose(tt.diagonal(), torch.ones(4, dtype=torch.float64), atol=1e-5)
        assert torch.allclose(tt, tt.T, atol=1e-6)
        assert ((st >= -1e-6) & (st <= 1 + 1e-6)).all()
    assert m["n_tokens"] > 0 and len(m["alignment"]["pairing"]) == 4
    assert not torch.equal(
        mats["target_target_before"], mats["target_target_after"]
    )  # alignment moved it


def test_salf_records_shapes_and_eof(smoke_results):
    for task in TASKS:
        rec = _read(smoke_results, "salf_analysis", "smoke", f"tiny-source__{task}.json")
        m = rec["metrics"]
        L = m["layers"]
        assert (
            L == 6
            and len(m["deviation"]) == len(m["deviation_std"]) == L + 1
            and len(m["gains"]) == L
        )
        assert 1 <= m["eof"] <= L - 1
        assert set(m["eof_by_gain"]) == set(salf.GAINS)
        assert all(1 <= e <= L - 1 for e in m["eof_by_gain"].values())
        assert m["eof_by_gain"][m["gain_kind"]] == m["eof"]
        n = budgets.SALF_ANALYSIS_EXAMPLES["smoke"]
        assert sum(m["example_eof_counts"].values()) == m["n"] == n
        assert rec["config"]["split"] == salf_analysis.salf_split(task)


def test_salf_reuses_valid_records_without_loading_models(smoke_results, monkeypatch):
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(smoke_results))
    monkeypatch.setattr(ModelPool, "get", lambda *a, **k: pytest.fail("a model was loaded"))
    records = salf_analysis.salf_deviation_gain(get_profile("smoke"), list(TASKS))
    assert [r["config"]["task"] for r in records] == list(TASKS)


def test_figures_are_byte_identical_when_rebuilt(smoke_results, tmp_path, monkeypatch):
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(smoke_results))
    builds = []
    for name in ("a", "b"):
        out = tmp_path / name
        paths = report.semalign_analysis_figures(out) + report.salf_analysis_figures(out)
        builds.append({p.name: p.read_bytes() for p in paths})
    assert set(builds[0]) == {
        "semalign_fig2_fidelity.png",
        "semalign_fig4-6_cka.png",
        "salf_fig2_deviation_gain.png",
        "salf_eof_table.md",
    }
    assert builds[0] == builds[1]
    assert all(builds[0][n].startswith(b"\x89PNG") for n in builds[0] if n.endswith(".png"))
    table = builds[0]["salf_eof_table.md"].decode()
    assert "profile `smoke`" in table and table.count("| tiny-source |") == 3


def test_parameter_checks():
    with pytest.raises(InvalidParameterError) as info:
        salf_analysis.check_parameters(["sst2", "bogus"])
    assert "unknown classification task(s) ['bogus']" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(InvalidParameterError, match="non-empty list"):
        salf_analysis.check_parameters("sst2")
    with pytest.raises(InvalidParameterError, match="n_examples=0"):
        salf_analysis.check_parameters(["sst2"], n_examples=0)
    assert salf_analysis.check_parameters(["trec", "trec"]) == ("trec",)
    with pytest.raises(InvalidParameterError, match="max_length=1"):
        semalign_analyses.semalign_budget(get_profile("smoke"), max_length=1)
    assert semalign_analyses.semalign_budget(get_profile("smoke"), n_examples=3).n_examples == 3


def test_layer_fidelity_equals_decomposition_fidelity():
    model = tiny_model("llama", seed=3, vocab_size=96, hidden_size=32)
    states = [torch.randn(20, 32, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    for bases in (
        semantics.semantic_bases(model.lm_head.weight, disk_cache=False),
        semantics.input_side_bases(model.model.embed_tokens.weight),
    ):
        means, _ = semalign_analyses.layer_fidelity(states, bases)
        expected = [float(semantics.decomposition_fidelity(h, bases).mean()) for h in states]
        assert means == pytest.approx(expected, abs=1e-5)


def test_layer_fidelity_of_each_decomposition(tmp_path, monkeypatch):
    """Dual and gain-folded lines of Fig. 2 against a float64 computation written out here."""
    monkeypatch.setenv("SEMALIGN_CACHE_DIR", str(tmp_path))  # bases cached on disk go here
    model = tiny_model("llama", seed=3, vocab_size=96, hidden_size=32)
    gain = 0.5 + torch.rand(32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        model.model.norm.weight.copy_(gain)
    states = [torch.randn(20, 32, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    entry = semalign_analyses.model_fidelity(model, "tiny", states)
    assert entry["dual"] == pytest.approx([1.0, 1.0], abs=1e-6)  # exact reconstruction
    s = torch.linalg.pinv((model.lm_head.weight.detach().double() * gain.double()).T)
    s = s / s.norm(dim=-1, keepdim=True)
    expected = []
    for h in states:
        x = h.double() / h.double().norm(dim=-1, keepdim=True)
        expected.append(float(torch.cosine_similarity(x @ s.T @ s, x, dim=-1).mean()))
    assert entry["gain_folded"] == pytest.approx(expected, abs=1e-5)
    cosine = semantics.semantic_bases(model.lm_head.weight)
    assert entry["output_side"] == pytest.approx(
        semalign_analyses.layer_fidelity(states, cosine)[0], abs=1e-6
    )
    assert abs(entry["gain_folded"][0] - entry["output_side"][0]) > 1e-3  # another line


def test_fidelity_figure_draws_the_decompositions_it_has():
    def info(keys):
        stats = {k: [0.5] * 3 for k in keys} | {f"{k}_std": [0.1] * 3 for k in keys}
        return {"model": "m", "layers": 3, **stats}

    old_keys = ("output_side", "input_side")
    for keys, lines in ((old_keys, 2), ((*old_keys, "dual", "gain_folded"), 4)):
        metrics = {"models": {"source": info(keys), "target": info(keys)}}
        record = {"profile": "x", "metrics": {**metrics, "n_tokens": 1, "n_examples": 1}}
        fig = plots.fidelity_figure(record)
        assert [len(ax.get_lines()) for ax in fig.axes] == [lines, lines]


def test_token_positions_skip_padding_and_cap():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    batches = [{"attention_mask": mask}, {"attention_mask": torch.ones(1, 3, dtype=torch.long)}]
    every = semalign_analyses.token_positions(batches, 100, seed=0)
    assert [len(p) for p in every] == [5, 3]
    assert all(int(mask[r, c]) == 1 for r, c in every[0].tolist())
    capped = semalign_analyses.token_positions(batches, 4, seed=0)
    assert sum(len(p) for p in capped) == 4
    again = semalign_analyses.token_positions(batches, 4, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(capped, again))


@pytest.mark.slow
@pytest.mark.realmodel
def test_output_side_bases_reconstruct_better_on_smollm2(smollm2):
    """The paper's Fig. 2 finding on a real model: pinv bases far above embedding rows."""
    from semalign_core.lm import surgery

    budget = semalign_analyses.semalign_budget(get_profile("smoke"), n_examples=2, max_length=64)
    batches, _ = semalign_analyses.measured_batches(smollm2.tokenizer, "gsm", budget, seed=0)
    positions = semalign_analyses.token_positions(batches, 128, seed=0)
    states = semalign_analyses.token_states(smollm2.model, batches, positions)
    output_side = semantics.semantic_bases(surgery.unembedding(smollm2.model).weight)
    input_side = semantics.input_side_bases(surgery.input_embeddings(smollm2.model).weight)
    out, _ = semalign_analyses.layer_fidelity(states, output_side)
    inp, _ = semalign_analyses.layer_fidelity(states, input_side)
    assert sum(o > i for o, i in zip(out, inp)) >= 0.8 * len(out)
