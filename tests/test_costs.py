"""The one cost model (semalign_core.costs): FLOPs of partial steps, nested peak memory."""

import numpy as np
import pytest

from semalign_core import costs

L, N, W, D, V = 4, 1000, 8, 16, 100  # blocks, params per block, attention width, hidden, vocab
SHAPE = costs.ModelShape(
    blocks=tuple(costs.BlockCost(N, W) for _ in range(L)),
    hidden=D,
    vocab=V,
    embedding_params=D * V,
    head_params=D * V,
    tied=False,
)
TOKENS, SEQ, POS = 6, 3, 2
FWD = TOKENS * (2 * N + 4 * SEQ * W)  # one block, forward
HEAD = 2 * D * V * POS  # one head read-out, forward


def test_default_spec_is_a_full_model_step():
    out = costs.step_flops(
        SHAPE, costs.TrainableSpec(trained_blocks=frozenset({1})), TOKENS, SEQ, POS
    )
    trained_bwd = TOKENS * (4 * N + 8 * SEQ * W)
    frozen_bwd = TOKENS * (2 * N + 8 * SEQ * W)
    assert out["forward"] == 4 * FWD + HEAD
    assert out["backward"] == trained_bwd + 2 * frozen_bwd + HEAD  # nothing below block 1


def test_run_blocks_and_readouts():
    spec = costs.TrainableSpec(
        trained_blocks=frozenset({1}), cached_prefix=1, run_blocks=2, readouts=(2,)
    )
    out = costs.step_flops(SHAPE, spec, TOKENS, SEQ, POS)
    assert out["forward"] == FWD + HEAD  # block 1 only; blocks 2-3 never run
    assert out["backward"] == TOKENS * (4 * N + 8 * SEQ * W) + HEAD
    two = costs.step_flops(
        SHAPE,
        costs.TrainableSpec(trained_blocks=frozenset({1}), cached_prefix=1, readouts=(2, 4)),
        TOKENS,
        SEQ,
        POS,
    )
    assert two["forward"] == 3 * FWD + 2 * HEAD
    none = costs.step_flops(SHAPE, costs.TrainableSpec(readouts=()), TOKENS, SEQ, POS)
    assert {k: none[k] for k in ("forward", "backward", "total")} == {
        "forward": 4 * FWD,
        "backward": 0.0,
        "total": 4 * FWD,
    }


def test_grad_outputs_from_runs_activation_backward_above_it_only():
    out = costs.step_flops(SHAPE, costs.TrainableSpec(grad_outputs_from=0), TOKENS, SEQ, POS)
    assert out["backward"] == 3 * TOKENS * (2 * N + 8 * SEQ * W) + HEAD  # blocks 1-3 and the head


def test_summarize_names_the_flop_model():
    with costs.PeakMemory() as peak:
        pass
    out = costs.summarize(
        [{"flops": 1.0, "tokens": 4, "real_tokens": 3}, {"flops": 2.0}], 5.0, peak, extra=1
    )
    assert out["flops"] == 3.0 and out["tokens"] == 4 and out["real_tokens"] == 3
    assert out["flop_model"] == costs.FLOP_MODEL and out["extra"] == 1 and out["wall_s"] == 5.0


def test_nested_peak_memory_keeps_the_outer_peak():
    big = 300  # MB
    with costs.PeakMemory() as outer:
        if outer.rss_scope != "block":
            pytest.skip("the peak RSS counter cannot be reset here")
        buf = np.ones(big * 2**20 // 8)  # touched, so resident
        del buf
        with costs.PeakMemory() as inner:
            pass
    assert inner.peak_rss_mb < outer.peak_rss_mb - big / 2  # the inner block did not see it
    assert outer.peak_rss_mb > big  # the reset inside did not lose it
