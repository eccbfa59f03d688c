"""The analytic cost model (semalign_core.costs) against measurements: FLOPs per component against
torch's FlopCounterMode on SALF's training loop, the activation estimate against the bytes
autograd saves, the analysis pass against a counted forward; memory components by hand."""

from __future__ import annotations

import pytest
import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.module_tracker import ModuleTracker

from semalign_core import costs
from semalign_core.errors import InvalidParameterError
from semalign_core.lm import surgery
from semalign_core.lm.replay import BlockReplay
from semalign_core.models.tiny import tiny_model
from semalign_core.salf import analysis, policies
from semalign_core.salf import finetune as ft

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ("negative", "positive")
TRAIN = [
    {"text": "a wonderful, moving film", "label": 1},
    {"text": "dull", "label": 0},
    {"text": "the plot never comes together and the acting is wooden", "label": 0},
    {"text": "great fun for the whole family", "label": 1},
    {"text": "I would not watch it again", "label": 0},
    {"text": "sharp, funny and warm", "label": 1},
    {"text": "a mess", "label": 0},
    {"text": "one of the best films of the year", "label": 1},
]
B = len(TRAIN)  # one batch of every example: one training step
L, EOF = 6, 3
# A vocabulary of 64 against blocks of ~62k parameters: the blocks dominate, so a cost model that
# ignores freezing is far off (the head of the real tiny models, V = 49152, would hide it).
SHAPE_A = dict(hidden_size=64, intermediate_size=256, num_layers=L, num_heads=4, num_kv_heads=2)
SHAPE_B = dict(hidden_size=48, intermediate_size=128, num_layers=4, num_heads=6, num_kv_heads=3)


def model_for(**shape) -> torch.nn.Module:
    return tiny_model("llama", vocab_size=64, tie_word_embeddings=True, **{**SHAPE_A, **shape})


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer over the prompts (built in-process: 42 tokens, fits vocab 64)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    texts = [analysis.format_prompt(r["text"]) for r in TRAIN] + list(WORDS)
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t)})
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def train_step(model, tokenizer, policy) -> ft.FinetuneResult:
    """One step of SALF's loop on all examples (one epoch: the prefix cache is never read)."""
    cfg = ft.FinetuneConfig(epochs=1, batch_size=B, lr=1e-3, max_length=32, cache_prefix=False)
    return ft.finetune(model, tokenizer, TRAIN, None, policy, cfg, label_words=WORDS)


def spec_for(kind: str, model, eof: int = EOF, n: int = L) -> costs.TrainableSpec:
    """The spec of one step under each policy, rebuilt here (the loop's ``_spec`` is not used)."""
    if kind == "full":
        return costs.TrainableSpec(frozenset(range(n)), embeddings=True, head=True)
    if kind == "fixed":
        return costs.TrainableSpec(frozenset(range(eof, n)))  # head frozen, final norm trained
    return costs.TrainableSpec(lora_params=policies.block_lora_params(model, range(eof, n)))


POLICIES = {
    "full": policies.FullFinetune,
    "fixed": lambda: policies.FixedEof(eof=EOF),
    "lora": lambda: policies.Lora(eof=EOF),
}


# --------------------------------------------------------------------------- FLOPs


class _Tracker(ModuleTracker):
    """ModuleTracker whose forward post-hook also runs when a forward raises. BlockReplay ends
    the backbone's forward with an exception once it has recorded the block calls
    (nethook.StopForward); torch's tracker then never leaves the backbone and the last block,
    and attributes every later FLOP to them as well."""

    def __enter__(self):
        self._fw_pre_handle = register_module_forward_pre_hook(self._fw_pre_hook)
        self._fw_post_handle = register_module_forward_hook(self._fw_post_hook, always_call=True)
        return self


class Counter(FlopCounterMode):
    def __init__(self):
        super().__init__(display=False)
        self.mod_tracker = _Tracker()

    def component(self, model, modules) -> int:
        """FLOPs (forward + backward) inside ``modules``, named as the tracker names them: the
        class of the module first called around it (the LM, or its backbone, through which
        block replay records the blocks' calls), then the module's path in it; a module only
        ever called alone (the LM head, under Unembed) by its class."""
        counts = self.get_flop_counts()
        total = 0
        for module in modules:
            keys = {
                f"{type(root).__name__}.{path}"
                for root in (model, surgery.backbone(model))
                for path, m in root.named_modules()
                if m is module
            } & counts.keys()
            keys = keys or {type(module).__name__}
            total += sum(sum(counts.get(k, {}).values()) for k in keys)
        return total


@pytest.fixture(scope="module")
def counted(tokenizer):
    """Per policy: FlopCounterMode's counts and step_flops of one step, and what they came from."""
    out = {}
    for name, make in POLICIES.items():
        with Counter() as counter:
            result = train_step(model_for(), tokenizer, make())
        model = result.model
        tokens = result.cost["tokens"]
        shape, spec = costs.model_shape(model), spec_for(name, model)
        out[name] = {
            "measured": {
                "blocks": counter.component(model, surgery.decoder_layers(model)),
                "embedding": counter.component(model, [surgery.input_embeddings(model)]),
                "head": counter.component(model, [surgery.unembedding(model)]),
                "total": counter.get_total_flops(),
            },
            "analytic": costs.step_flops(shape, spec, tokens, tokens // B, B),
            "shape": shape,
            "spec": spec,
            "dims": (tokens, tokens // B, B),  # tokens, T, logit positions
        }
    return out


@pytest.mark.parametrize("name", POLICIES)
def test_step_flops_match_flop_counter_per_component(counted, name):
    measured, analytic = counted[name]["measured"], counted[name]["analytic"]
    parts = ("blocks", "embedding", "head")
    assert sum(analytic[p] for p in parts) == pytest.approx(analytic["total"], rel=1e-12)
    assert measured["embedding"] == 0 and analytic["embedding"] == 0  # a lookup: no matmul
    for part in ("blocks", "head", "total"):
        assert analytic[part] == pytest.approx(measured[part], rel=0.05), part
    # the blocks dominate: the comparison above is a comparison of the freezing logic
    assert measured["blocks"] > 100 * measured["head"]


def test_model_shape_reads_what_the_memory_estimate_needs(counted):
    shape = counted["full"]["shape"]
    assert shape.blocks[0] == costs.BlockCost(61568, 64, heads=4, intermediate=256)
    assert shape.tied and shape.other_params == 64  # the final norm
    assert shape.total_params == costs.parameter_counts(model_for())["total_params"]


def test_a_model_that_ignores_freezing_is_caught(counted):
    fixed = counted["fixed"]
    ignoring = costs.step_flops(fixed["shape"], spec_for("full", None), *fixed["dims"])
    for part in ("blocks", "total"):
        assert ignoring[part] != pytest.approx(fixed["measured"][part], rel=0.05), part


def test_lora_adapters_cost_six_flops_per_token_and_parameter(counted):
    """2 n_lora forward + 4 n_lora backward (the adapters' weight gradients, the gradient through
    B and then A); an earlier version's 6 n_lora backward is more than 5 % over the count."""
    lora = counted["lora"]
    tokens = lora["dims"][0]
    bare = costs.TrainableSpec(lora_params=dict.fromkeys(lora["spec"].lora_params, 0))
    without = costs.step_flops(lora["shape"], bare, *lora["dims"])["blocks"]
    adapters = lora["analytic"]["blocks"] - without
    assert adapters == 6 * tokens * sum(lora["spec"].lora_params.values())
    six = lora["analytic"]["blocks"] + adapters / 3  # 2 + 6 per token and adapter parameter
    assert six != pytest.approx(lora["measured"]["blocks"], rel=0.05)


# --------------------------------------------------------------------------- optimizer, analysis


def test_optimizer_flops_per_parameter_and_unknown_optimizer():
    assert costs.optimizer_flops(1000) == 16_000.0  # AdamW
    assert costs.optimizer_flops(1000, "sgd") == 4_000.0
    with pytest.raises(InvalidParameterError, match="optimizer"):
        costs.optimizer_flops(1000, "lion")


def test_analysis_flops_match_a_counted_no_grad_forward(tokenizer):
    model = model_for()
    shape = costs.model_shape(model)
    with FlopCounterMode(display=False) as trace_count:
        trace = analysis.transition_trace(model, tokenizer, TRAIN, label_words=WORDS, batch_size=B)
    with FlopCounterMode(display=False) as lens_count:
        analysis.deviations(model, trace, "logit_lens_ce")  # the head in all L+1 spaces
    ((examples, seq_len),) = trace.meta["batch_shapes"]
    tokens = examples * seq_len
    no_bases = costs.analysis_flops(shape, tokens, seq_len, examples, semantic_bases=False)
    assert no_bases == pytest.approx(trace_count.get_total_flops(), rel=0.05)
    lens = costs.analysis_flops(shape, tokens, seq_len, examples, L + 1, semantic_bases=False)
    counted = trace_count.get_total_flops() + lens_count.get_total_flops()
    assert lens == pytest.approx(counted, rel=0.05)
    v, d = shape.vocab, shape.hidden
    assert costs.pinv_flops(shape) == 8 * v * d * d + 20 * d**3


# --------------------------------------------------------------------------- memory

D, W, H, FF, V, T, TOK = 4, 8, 2, 32, 10, 3, 6  # hidden, d_attn, heads, MLP, vocab, T, tokens
SMALL = costs.ModelShape(
    blocks=(costs.BlockCost(1000, W, H, FF), costs.BlockCost(1000, W, H, FF)),
    hidden=D,
    vocab=V,
    embedding_params=V * D,
    head_params=V * D,
    tied=True,
    other_params=D,  # the final norm
)


def test_train_memory_components_by_hand():
    trained = 1000 + D  # block 1 and the final norm
    spec = costs.TrainableSpec(frozenset({1}))
    out = costs.train_memory_bytes(SMALL, spec, trained, TOK, T, cached_prefix_tokens=TOK)
    per_token = 6 * D + 4 * W + H * T + 4 * FF  # block 1 trains; block 0 records nothing
    head = (TOK // T) * (V + 3 * D)  # one logit row per example: log-softmax + final norm
    expected = {
        "weights": 4.0 * (2000 + V * D + D),  # tied: the head is the embedding
        "gradients": 4.0 * trained,
        "optimizer_state": 4.0 * 2 * trained,  # AdamW's two moments
        "activations": 4.0 * (TOK * per_token + head),
        "prefix_cache": 4.0 * TOK * D,
    }
    assert out == {**expected, "total": sum(expected.values())}
    sgd = costs.train_memory_bytes(SMALL, costs.TrainableSpec(), 0, TOK, T, 2, "sgd")
    assert sgd["optimizer_state"] == sgd["activations"] == 0.0  # nothing trains, nothing recorded
    assert sgd["weights"] == 2.0 * (2000 + V * D + D)
    with pytest.raises(InvalidParameterError, match="optimizer"):
        costs.train_memory_bytes(SMALL, spec, trained, TOK, T, optimizer="lion")
    # block 0 trains, block 1 above it is frozen (activation gradients only); LoRA adds adapters
    frozen = costs.activation_bytes(SMALL, costs.TrainableSpec(frozenset({0})), TOK, T, 1)
    assert frozen == TOK * per_token + TOK * (2 * D + 3 * W + H * T + 3 * FF) + head
    lora = costs.TrainableSpec(lora_params={1: 50})
    assert costs.activation_bytes(SMALL, lora, TOK, T, 1) == TOK * (per_token - 2 * D) + head
    assert costs.train_memory_bytes(SMALL, lora, 50, TOK, T)["weights"] == 4.0 * (2054 + V * D)


def saved_bytes(model, step):
    """Bytes of the unique storages autograd saves for backward during ``step()`` (parameters
    left out: they are the weights, not activations), and what ``step()`` returned."""
    storages = {}

    def pack(t):
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}  # LoRA's too
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = step()
    return sum(storages.values()), out


MEMORY_CASES = {
    "full": (policies.FullFinetune, "full"),
    "eof1": (lambda: policies.FixedEof(eof=1), "fixed"),
    "eof3": (lambda: policies.FixedEof(eof=3), "fixed"),
    "lora2": (lambda: policies.Lora(eof=2), "lora"),
}


@pytest.mark.parametrize("shape", [SHAPE_A, SHAPE_B], ids=["d64", "d48"])
@pytest.mark.parametrize("case", MEMORY_CASES)
def test_activation_estimate_matches_saved_tensors(tokenizer, shape, case):
    make, kind = MEMORY_CASES[case]
    model, policy = model_for(**shape), make()
    measured, result = saved_bytes(model, lambda: train_step(model, tokenizer, policy))
    spec = spec_for(kind, result.model, getattr(policy, "eof", 0), shape["num_layers"])
    tokens, trained = result.cost["tokens"], result.cost["trainable_params"]
    memory = costs.train_memory_bytes(costs.model_shape(model), spec, trained, tokens, tokens // B)
    assert memory["activations"] == pytest.approx(measured, rel=0.2)


@pytest.mark.parametrize("shape", [SHAPE_A, SHAPE_B], ids=["d64", "d48"])
def test_activation_estimate_of_frozen_blocks_above_a_trained_one(shape):
    """Block 1 trains, the blocks above it only pass gradients (no SALF policy does this)."""
    model = model_for(**shape)
    for p in model.parameters():
        p.requires_grad_(False)
    surgery.decoder_layers(model)[1].requires_grad_(True)
    ids = torch.randint(0, 64, (B, 13), generator=torch.Generator().manual_seed(0))

    def step():
        with torch.no_grad():
            replay = BlockReplay(model, ids, torch.ones_like(ids))
            hidden = replay.run(replay.embedding_output, 0, 1)
        logits = surgery.Unembed(model)(replay.run(hidden, 1)[:, -1])
        torch.nn.functional.cross_entropy(logits, ids[:, 0]).backward()

    measured, _ = saved_bytes(model, step)
    spec = costs.TrainableSpec(frozenset({1}))
    estimate = costs.activation_bytes(costs.model_shape(model), spec, B * 13, 13)
    assert estimate == pytest.approx(measured, rel=0.2)
