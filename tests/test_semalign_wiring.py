"""SemAlign's stage losses against an independent full-forward computation (issue 13, item 8).

The trainer (``semalign.transfer`` → ``objective.StageLoss``) runs layer k alone on cached inputs,
reads cached source supervision and reuses logits between terms. Here the same numbers are
recomputed the long way, written out from the spec (SEMALIGN.md, Method 2 and 5) and
docs/decisions.md with plain torch on plain ``transformers`` forwards (``output_hidden_states``):

* source state of the paired source layer (block output), mixed first when the pairing
  interpolates; semantic bases S = unit rows of pinv(Wᵀ) of each LM head; recomposition
  h~ = S_tgtᵀ (S_src h / ‖h‖);
* z~ = head_T(RMSNorm_T(h~)), z = head_T(RMSNorm_T(h_k)) (the target's final norm on both);
* layer term ½[Σ p~ δ² − (Σ p~ δ)²], p~ = softmax(z~/τ), δ = (z − z~)/τ, mean over the positions
  that predict a response token (labels shifted by one: no prompt-only, no padding position);
* output KL τ²·KL(p_source ‖ p_target) of the two models' output distributions at those positions.

Only the pairing (which source layers each target layer reads, as the trainer reports it) is
taken from the package. Each deliberate mis-wiring (another source layer, another recomposition
map, no final norm, reversed KL, prompt/padding positions in the layer term) is computed too and
shown to move the value far outside the tolerance, so the equality has power.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import pytest
import torch
from torch import Tensor, nn

from semalign_core.data.batching import sft_batches
from semalign_core.lm.surgery import Unembed
from semalign_core.semalign.config import SemAlignConfig
from semalign_core.semalign.frontier import LayerInputs
from semalign_core.semalign.objective import StageLoss
from semalign_core.semalign.supervision import Supervision
from semalign_core.semalign.transfer import transfer

pytestmark = pytest.mark.usefixtures("one_thread")

# Prompts and responses of different lengths: two batches of two, each right-padded.
RECORDS = [
    ("What is 2 + 3?", "Answer: 2 + 3 = 5. So the answer is 5."),
    (
        "Tom has three apples and buys four more at the market. How many apples does he have?",
        "Answer: 7.",
    ),
    ("Name a prime number between 10 and 20.", "Answer: 13 is prime."),
    ("A train leaves at 3 pm and arrives at 5 pm. How long is the ride?", "Answer: two hours."),
]
RECORDS = [
    {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    for q, a in RECORDS
]

BASE = SemAlignConfig(
    steps_per_stage=2,  # step 0: batch 0 before any update of the stage; step 1: batch 1
    eval_batches=2,  # loss_before / loss_after: mean over both batches
    lr=1e-3,
    batch_size=2,
    max_length=64,
    progress=False,
)
# Weights, τ ≠ 1, the KL at every stage (layers after k replayed), an interpolated pairing, and
# nothing cached: the teacher kept as final-normed states, z~ recomputed at every step.
VARIANT = replace(
    BASE,
    tau=2.0,
    layer_weight=0.7,
    output_kl_weight=1.3,
    output_kl_every_stage=True,
    pairing="interpolate",
    max_cached_logits_bytes=0,
)
CONFIGS = {"base": BASE, "variant": VARIANT}
# fp32 trainer (blocks replayed on cached inputs, composite map) vs the fp64 reference: the
# largest relative gap seen is 2e-6.
RTOL, ATOL = 1e-5, 1e-7
ZERO = 1e-6

# --------------------------------------------------------------------------- the reference


def forward(model: nn.Module, batch: dict) -> tuple[list[Tensor], Tensor]:
    """Every block's output (list index = 1-based layer; [0] = embeddings) and the logits, fp64.

    ``output_hidden_states`` gives the last block's output *after* the final norm, so the state
    entering the final norm is taken with a plain forward pre-hook.
    """
    seen = {}
    hook = model.model.norm.register_forward_pre_hook(lambda m, args: seen.update(pre=args[0]))
    try:
        with torch.no_grad():
            out = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                output_hidden_states=True,
                use_cache=False,
            )
    finally:
        hook.remove()
    states = [h.double() for h in out.hidden_states[:-1]] + [seen["pre"].double()]
    return states, out.logits.double()


def readout(h: Tensor, model: nn.Module, final_norm: bool = True) -> Tensor:
    """head(RMSNorm(h)) written out: w ⊙ h / √(mean h² + ε), then the LM head (fp64)."""
    if final_norm:
        norm = model.model.norm
        w, eps = norm.weight.detach().double(), norm.variance_epsilon
        h = w * h / torch.sqrt(h.square().mean(-1, keepdim=True) + eps)
    return h @ model.lm_head.weight.detach().double().T


def unit_rows(m: Tensor) -> Tensor:
    return m / m.norm(dim=-1, keepdim=True)


def recompose(h: Tensor, s_src: Tensor, s_tgt: Tensor) -> Tensor:
    """a = S_src h/‖h‖ (cosine coefficients, one per token), h~ = S_tgtᵀ a."""
    a = (h / h.norm(dim=-1, keepdim=True)) @ s_src.T
    return a @ s_tgt


def positions(batch: dict, kind: str = "response") -> Tensor:
    """Where a term is taken: the positions that predict a response token (t predicts t+1)."""
    labels, mask = batch["labels"], batch["attention_mask"].bool()
    if kind == "response":
        sel = torch.zeros_like(mask)
        sel[:, :-1] = labels[:, 1:] != -100
        return sel
    if kind == "unshifted":  # mis-wired: positions holding a response token
        return labels != -100
    if kind == "non_padding":  # mis-wired: prompt positions included
        return mask
    if kind == "all":  # mis-wired: prompt and padding positions included
        return torch.ones_like(mask)
    raise ValueError(kind)


def surrogate(z: Tensor, z_tilde: Tensor, tau: float) -> Tensor:
    """½ δᵀ(diag p~ − p~p~ᵀ)δ = ½[Σ p~δ² − (Σ p~δ)²] per position, δ = (z − z~)/τ; mean."""
    p = torch.softmax(z_tilde / tau, dim=-1)
    delta = (z - z_tilde) / tau
    return (0.5 * ((p * delta.square()).sum(-1) - (p * delta).sum(-1).square())).mean()


def kl(p_logits: Tensor, q_logits: Tensor, tau: float) -> Tensor:
    """τ² · KL(softmax(p/τ) ‖ softmax(q/τ)), mean over positions."""
    log_p = torch.log_softmax(p_logits / tau, dim=-1)
    log_q = torch.log_softmax(q_logits / tau, dim=-1)
    return tau**2 * (log_p.exp() * (log_p - log_q)).sum(-1).mean()


# Each deliberate mis-wiring of the trainer, as keyword arguments of Reference.parts.
MISWIRINGS = {
    "other_source_layer": dict(source_shift=True),
    "raw_pinv_map": dict(bases="raw_pinv"),  # pinv rows not unit-normalised
    "head_rows_map": dict(bases="head_rows"),  # the heads' rows instead of pinv(Wᵀ)
    "vocab_misaligned_map": dict(bases="shifted_vocab"),  # target bases one token off
    "no_final_norm": dict(final_norm=False),
    "reversed_kl": dict(reverse_kl=True),
    "unshifted_positions": dict(where="unshifted"),
    "prompt_positions": dict(where="non_padding"),
    "prompt_and_padding_positions": dict(where="all"),
}


class Reference:
    """Stage losses of one batch from full forwards of the source and of the target as it is.

    Only the decoder layers train (the final norm and the head never do), so the target's norm
    and head are read once from the untrained target.
    """

    def __init__(self, source: nn.Module, target: nn.Module, config: SemAlignConfig, batches):
        self.config, self.batches, self.target = config, batches, target
        self.source = [forward(source, b) for b in batches]
        w_s = source.lm_head.weight.detach().double()
        w_t = target.lm_head.weight.detach().double()
        pinv_s, pinv_t = torch.linalg.pinv(w_s.T), torch.linalg.pinv(w_t.T)
        self.bases = {  # (S_src, S_tgt)
            "pinv": (unit_rows(pinv_s), unit_rows(pinv_t)),
            "raw_pinv": (pinv_s, pinv_t),
            "head_rows": (unit_rows(w_s), unit_rows(w_t)),
            "shifted_vocab": (unit_rows(pinv_s), unit_rows(pinv_t).roll(1, dims=0)),
        }

    def parts(
        self,
        target_pass: tuple[list[Tensor], Tensor],
        i: int,
        stage: int,
        mix: list[tuple[int, float]],
        *,
        source_shift: bool = False,
        bases: str = "pinv",
        final_norm: bool = True,
        reverse_kl: bool = False,
        where: str = "response",
    ) -> dict[str, float]:
        """{"layer", "kl" (where the config adds it at ``stage``), "loss"} of batch i, given the
        target's ``forward`` on it."""
        cfg, tau, batch, model = self.config, self.config.tau, self.batches[i], self.target
        src_states, src_logits = self.source[i]
        tgt_states, tgt_logits = target_pass
        if source_shift:  # the neighbouring source layer(s): shallower, or deeper from layer 1
            step = 1 if min(s for s, _ in mix) == 1 else -1
            mix = [(s + step, w) for s, w in mix]
        sel = positions(batch, where)
        h_src = sum(w * src_states[s][sel] for s, w in mix)  # mixed before recomposition
        z_tilde = readout(recompose(h_src, *self.bases[bases]), model, final_norm)
        z = readout(tgt_states[stage][sel], model, final_norm)
        out = {"layer": float(surrogate(z, z_tilde, tau))}
        loss = cfg.layer_weight * out["layer"]
        if cfg.kl_at(stage, len(tgt_states) - 1):
            keep = positions(batch)
            teacher = src_logits[keep]
            student = (
                tgt_logits[keep] if final_norm else readout(tgt_states[-1][keep], model, False)
            )
            out["kl"] = float(
                kl(student, teacher, tau) if reverse_kl else kl(teacher, student, tau)
            )
            loss += cfg.output_kl_weight * out["kl"]
        out["loss"] = loss
        return out


def with_layers(original: nn.Module, trained: nn.Module, n_trained: int) -> nn.Module:
    """The target at a point of the frontier: layers 1..n_trained trained, the rest original."""
    model = copy.deepcopy(original)
    for j in range(n_trained):
        model.model.layers[j].load_state_dict(trained.model.layers[j].state_dict())
    return model


def tolerance(value: float) -> float:
    return ATOL + RTOL * abs(value)


# --------------------------------------------------------------------------- fixtures


def sharpen(model: nn.Module, seed: int) -> nn.Module:
    """Realistic output distributions and a final norm that is more than a rescaling: the tiny
    models' logits are nearly uniform (head std 0.02) and their norm gains all ones, which makes
    a reversed KL (KL is symmetric to second order) or a dropped norm gain nearly invisible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
        w = model.model.norm.weight
        w.copy_(0.5 + torch.rand(w.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def models(tiny_transfer_pair):
    src, tgt, tok, _, _ = tiny_transfer_pair(n_train=1, n_extract=1)
    return sharpen(src, 1), sharpen(tgt, 2), tok


@pytest.fixture(scope="module")
def batches(models):
    out = sft_batches(RECORDS, models[2], BASE.batch_size, BASE.max_length)
    assert len(out) == 2
    for b in out:  # padding, and prompts of different lengths, in every batch
        assert not b["attention_mask"].bool().all()
        prompt_len = (b["labels"] == -100).int().argmin(dim=1)
        assert prompt_len[0] != prompt_len[1]
    return out


@dataclass
class Run:
    result: object
    reference: Reference
    before: dict[int, list]  # stage → the target's forward on each batch before the stage
    after: dict[int, list]  # … and after it


@pytest.fixture(scope="module")
def runs(models, batches) -> dict[str, Run]:
    src, tgt, tok = models
    out = {}
    for name, config in CONFIGS.items():
        result = transfer(src, copy.deepcopy(tgt), RECORDS, RECORDS[:2], config, tok)
        before, after = {}, {}
        for k in range(1, len(result.stages) + 1):
            before[k] = [forward(with_layers(tgt, result.model, k - 1), b) for b in batches]
            after[k] = [forward(with_layers(tgt, result.model, k), b) for b in batches]
        out[name] = Run(result, Reference(src, tgt, config, batches), before, after)
    return out


def mixes(result) -> dict[int, list[tuple[int, float]]]:
    """The source layers (and weights) the trainer reports for each stage."""
    return {r["stage"]: [(s, w) for s, w in r["source_layers"]] for r in result.stages}


# --------------------------------------------------------------------------- equality


@pytest.mark.parametrize("name", list(CONFIGS))
def test_stage_losses_equal_the_full_forward_reference(runs, name):
    """Every stage: the first step's layer term, KL and loss (batch 0, nothing of the stage
    trained yet), and the mean loss over both batches before and after the stage."""
    run = runs[name]
    result, ref, config = run.result, run.reference, CONFIGS[name]
    n = len(result.stages)
    assert [r["stage"] for r in result.stages] == [1, 2, 3, 4]
    assert result.cost["teacher_cache"] == (
        "hidden" if config.max_cached_logits_bytes == 0 else "logits"
    )
    if config.pairing != "interpolate":  # the reported mix is the pairing itself
        assert mixes(result) == {j: [(s, 1.0)] for j, s in result.pairing.target_to_source.items()}
    for k, mix in mixes(result).items():
        rec = result.stages[k - 1]
        first = ref.parts(run.before[k][0], 0, k, mix)
        checks = {
            "layer": (rec["layer_losses"][0], first["layer"]),
            "loss": (rec["losses"][0], first["loss"]),
            "loss_before": (
                rec["loss_before"],
                sum(ref.parts(run.before[k][i], i, k, mix)["loss"] for i in (0, 1)) / 2,
            ),
            "loss_after": (
                rec["loss_after"],
                sum(ref.parts(run.after[k][i], i, k, mix)["loss"] for i in (0, 1)) / 2,
            ),
        }
        assert bool(rec["kl_losses"]) == config.kl_at(k, n) == ("kl" in first)
        if rec["kl_losses"]:
            checks["kl"] = (rec["kl_losses"][0], first["kl"])
        for what, (got, want) in checks.items():
            assert abs(got - want) <= tolerance(want), (name, k, what, got, want)


@pytest.mark.parametrize("miswiring", list(MISWIRINGS))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_miswiring_moves_the_loss_beyond_the_tolerance(runs, name, miswiring):
    """The equality above has power: each mis-wired reference misses the trainer's first-step
    loss by several tolerances at every stage it applies to (the KL's direction: KL stages)."""
    run = runs[name]
    result, ref = run.result, run.reference
    n = len(result.stages)
    checked = 0
    for k, mix in mixes(result).items():
        if miswiring == "reversed_kl" and not CONFIGS[name].kl_at(k, n):
            continue
        got = result.stages[k - 1]["losses"][0]
        wired = ref.parts(run.before[k][0], 0, k, mix, **MISWIRINGS[miswiring])["loss"]
        assert abs(wired - got) > 3 * tolerance(got), (name, k, wired, got)
        checked += 1
    assert checked >= 1


# --------------------------------------------------------------------------- zero layer term


def test_layer_term_is_zero_when_the_supervision_is_the_targets_own_state(models, batches):
    """StageLoss with the target's own block outputs as supervision (and its own output as the
    teacher): zero at every stage; the neighbouring layer's states as supervision are not."""
    _, tgt, _ = models
    passes = [forward(tgt, b) for b in batches]
    n = len(tgt.model.layers)
    own = {k: [p[0][k].float() for p in passes] for k in range(1, n + 1)}
    shifted = {k: [p[0][k - 1].float() for p in passes] for k in range(1, n + 1)}
    teacher = [p[1][positions(b)].float() for p, b in zip(passes, batches)]
    bases = unit_rows(torch.linalg.pinv(tgt.lm_head.weight.detach().T))
    inputs = LayerInputs(tgt, batches, index=0)
    for k in range(1, n + 1):
        for states, zero in ((own, True), (shifted, False)):
            sup = Supervision(states, teacher, "logits")
            loss_fn = StageLoss(tgt, sup, inputs, batches, BASE, bases, bases, Unembed(tgt))
            for i in range(len(batches)):
                loss, parts = loss_fn(k, i)
                assert ("kl" in parts) == (k == n)
                if zero:
                    assert float(loss.detach()) <= ZERO and parts["layer"] <= ZERO, (k, i, parts)
                else:
                    assert parts["layer"] > 1e-2, (k, i, parts)
        if k < n:
            inputs.advance()


def tight_frame(model: nn.Module, seed: int) -> nn.Module:
    """A copy whose head is a tight frame: 1024 stacked orthogonal 48×48 blocks, so WᵀW = 1024·I,
    the unit bases are the head's rows and S_tgtᵀ S_src = 1024·I when source and target share it."""
    model = copy.deepcopy(model)
    w = model.lm_head.weight
    n_vocab, d = w.shape
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n_vocab // d, d, d, generator=g, dtype=torch.float64))
    with torch.no_grad():
        w.copy_(q.reshape(n_vocab, d))
    return model


def test_self_transfer_with_a_tight_frame_head_has_a_zero_layer_term(models, batches):
    """Source = target (tight-frame head, rescale="source_norm"): the recomposed source state is
    the target's own state, so the trainer's layer term (and final KL) are zero at every stage,
    while the reference with another source layer is far from zero."""
    _, tgt, tok = models
    model = tight_frame(tgt, 3)
    config = replace(BASE, rescale="source_norm", lr=1e-12, steps_per_stage=1)
    # the construction: h~ = S_tgtᵀ(S_src h/‖h‖), rescaled to ‖h‖, is h itself
    h = forward(model, batches[0])[0][2][positions(batches[0])]
    s = unit_rows(torch.linalg.pinv(model.lm_head.weight.detach().double().T))
    h_tilde = recompose(h, s, s)
    h_tilde = h_tilde / h_tilde.norm(dim=-1, keepdim=True) * h.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(h_tilde, h, rtol=1e-9, atol=1e-9)

    result = transfer(model, copy.deepcopy(model), RECORDS, RECORDS[:2], config, tok)
    n = len(result.stages)
    assert result.pairing.target_to_source == {j: j for j in range(1, n + 1)}
    for rec in result.stages:
        assert rec["layer_losses"][0] <= ZERO and rec["loss_before"] <= ZERO, rec
        assert all(x <= ZERO for x in rec["kl_losses"]), rec
    assert result.stages[-1]["kl_losses"]
    ref = Reference(model, model, config, batches)
    target_pass = forward(model, batches[0])
    for k in range(1, n + 1):
        assert ref.parts(target_pass, 0, k, [(k, 1.0)])["layer"] <= ZERO
        assert ref.parts(target_pass, 0, k, [(k, 1.0)], source_shift=True)["layer"] > 1e-2
