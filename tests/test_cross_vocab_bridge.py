"""The vocabulary bridge (issue 19, item 2): token strings read as bytes, the identity on one
vocabulary, hand-checked entries between Gemma-3 and SmolLM2, the mass it carries, coverage."""

from __future__ import annotations

import json

import pytest
import torch

from semalign_core.errors import InvalidParameterError
from semalign_core.lm import semantics
from semalign_core.models.tiny import tiny_model
from semalign_core.paths import REPO_ROOT
from semalign_core.semalign.crossvocab import vocab_bridge as vb
from semalign_core.semalign.supervision import map_states, semantic_maps

GSM8K = REPO_ROOT.parent / "shared" / "benchmarks" / "gsm8k" / "test.jsonl"


@pytest.fixture(scope="module")
def gemma_tok():
    from semalign_core.models.registry import load_tokenizer

    return load_tokenizer("gemma3-270m")


@pytest.fixture(scope="module")
def smol_tok():
    from semalign_core.models.registry import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def bridges(gemma_tok, smol_tok):
    return {mode: vb.build_bridge(gemma_tok, smol_tok, mode) for mode in vb.MODES}


@pytest.fixture
def bases_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMALIGN_CACHE_DIR", str(tmp_path))  # pinv caches stay out of the repo
    semantics.clear_bases_cache()


def test_token_keys_by_hand(gemma_tok, smol_tok):
    assert vb.token_scheme(smol_tok) == "byte_level" and vb.token_scheme(gemma_tok) == "metaspace"
    assert vb.token_key("Ġworld", "byte_level") == b" world"
    assert vb.token_key("ĊĠ", "byte_level") == b"\n "
    assert vb.token_key("Ã", "byte_level") == b"\xc3"  # a lone UTF-8 lead byte
    assert vb.token_key("ĠcafÃ©", "byte_level") == " café".encode()
    assert vb.token_key("▁world", "metaspace") == b" world"
    assert vb.token_key("▁café", "metaspace") == " café".encode()
    assert vb.token_key("<0xC3>", "metaspace") == b"\xc3"
    assert vb.token_key("<0x41>", "metaspace") == ("byte", 0x41)  # "A" exists as a piece
    assert vb.key_text(("byte", 0x41)) == b"A" and vb.key_text(("added", "<bos>")) is None


@pytest.mark.parametrize("mode", vb.MODES)
def test_a_vocabulary_bridged_to_itself_is_the_identity(smol_tok, mode):
    bridge = vb.build_bridge(smol_tok, smol_tok, mode)
    ids = torch.arange(len(smol_tok))
    assert torch.equal(bridge.source_ids, ids) and torch.equal(bridge.target_ids, ids)
    assert torch.equal(bridge.weights, torch.ones(len(ids)))
    assert bridge.coverage()["source_vocab_share"] == bridge.coverage()["target_vocab_share"] == 1
    p = torch.softmax(torch.randn(3, len(ids), generator=torch.Generator().manual_seed(0)), -1)
    assert torch.equal(bridge.map_probs(p), p)


def test_gemma_bridged_to_itself_is_the_identity(gemma_tok):
    bridge = vb.build_bridge(gemma_tok, gemma_tok, "exact")
    ids = torch.arange(len(gemma_tok))
    assert torch.equal(bridge.source_ids, ids) and torch.equal(bridge.target_ids, ids)


def test_identity_bridge_recomposes_as_one_vocabulary(smol_tok, bases_cache):
    """Through the identity bridge the composite map and the supervisory states are those of
    the same-vocabulary path (supervision.semantic_maps)."""
    src = tiny_model("llama", seed=1, vocab_size=len(smol_tok), hidden_size=48, num_layers=2)
    tgt = tiny_model("llama", seed=2, vocab_size=len(smol_tok), hidden_size=32, num_layers=2)
    bridge = vb.build_bridge(smol_tok, smol_tok, "exact")
    rows_src, rows_tgt, m_bridged = vb.bridged_semantic_maps(src, tgt, bridge)
    bases_src, bases_tgt, m_same = semantic_maps(src, tgt)
    assert torch.equal(rows_src, bases_src) and torch.equal(rows_tgt, bases_tgt)
    torch.testing.assert_close(m_bridged, m_same, atol=1e-6, rtol=0)
    h = torch.randn(5, 48, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        map_states(h, m_bridged, "none"), map_states(h, m_same, "none"), atol=1e-6, rtol=0
    )


def test_entries_between_gemma_and_smollm2_by_hand(gemma_tok, smol_tok, bridges):
    g, s = gemma_tok.convert_tokens_to_ids, smol_tok.convert_tokens_to_ids
    exact = dict(zip(bridges["exact"].source_ids.tolist(), bridges["exact"].target_ids.tolist()))
    proj = dict(
        zip(bridges["projection"].source_ids.tolist(), bridges["projection"].target_ids.tolist())
    )
    assert exact[g("▁world")] == s("Ġworld") and exact[g("Hello")] == s("Hello")
    assert exact[g("▁café")] == s("ĠcafÃ©") and exact[g("\n")] == s("Ċ")
    assert exact[g("<0xC3>")] == s("Ã")  # the same lone byte on both sides
    assert exact[gemma_tok.eos_token_id] == smol_tok.eos_token_id
    # "▁naïve" is no SmolLM2 token: projection sends it to the first piece of " naïve", "Ġna"
    assert g("▁naïve") not in exact and proj[g("▁naïve")] == s("Ġna")
    assert proj[g("<0x41>")] == s("A")  # an ASCII byte fallback is projected as its text
    assert g("<start_of_turn>") not in proj  # control tokens are never projected
    assert len(set(exact.values())) == len(exact)  # exact is one-to-one
    assert all(proj[k] == v for k, v in exact.items())  # projection extends exact


def test_casefold_maps_only_unique_lowercase_matches():
    src = [b"Apple", b"Pear", b"Kiwi", b"fig", ("added", "<bos>")]
    tgt = [b"apple", b"pear", b"PEAR", b"kiwi", b"fig"]
    exact = {3: 4}
    assert vb._casefold_pairs(src, tgt, exact, one_to_one=True) == {0: 0, 2: 3}


def test_map_probs_is_the_sparse_matrix_product(bridges):
    bridge = bridges["projection"]
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(4 * torch.randn(3, bridge.source_size, generator=gen), -1)
    dense_product = torch.sparse.mm(bridge.matrix().t(), p.T).T
    torch.testing.assert_close(bridge.map_probs(p), dense_product, atol=1e-7, rtol=1e-5)
    covered = p[:, bridge.source_ids].sum(-1).mean()  # one entry of weight 1 per source token
    assert bridge.mass_coverage(p) == pytest.approx(float(covered), rel=1e-5)
    with pytest.raises(InvalidParameterError):
        bridge.map_probs(p[:, :-1])


def test_coverage_on_real_text(gemma_tok, bridges, capsys):
    """Vocabulary shares, and the share of real GSM8K tokens (one-hot distributions) covered."""
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:5]]
    text = "\n".join(r["question"] + "\n" + r["answer"] for r in rows)
    ids = torch.tensor(gemma_tok(text, add_special_tokens=False)["input_ids"])
    assert 300 <= ids.numel() <= 1000
    one_hot = torch.nn.functional.one_hot(ids[:64], bridges["exact"].source_size).float()
    stats = {}
    for mode, bridge in bridges.items():
        token_share = float(torch.isin(ids, bridge.source_ids).float().mean())
        assert bridge.mass_coverage(one_hot) == pytest.approx(
            float(torch.isin(ids[:64], bridge.source_ids).float().mean())
        )
        stats[mode] = {**bridge.coverage(), "gsm8k_token_share": token_share, "n": ids.numel()}
    with capsys.disabled():
        print("\nbridge Gemma-3 → SmolLM2:", json.dumps(stats, indent=1))
    exact, proj = stats["exact"], stats["projection"]
    assert exact["source_vocab_share"] < proj["source_vocab_share"]
    assert exact["gsm8k_token_share"] <= proj["gsm8k_token_share"] == pytest.approx(1.0)
