"""The analytic cost model against measurements at the scaling study's sizes (FLOPs within 10% of
``torch.utils.flop_counter``, prefill memory within 20% of the measured tensor memory, KV cache exact), and its
paper-scale table (``python -m benchmarks.cost --paper``)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import cost
from benchmarks.measure import Settings, count_flops, forward, peak_memory_bytes
from benchmarks.scaling import _cache_bytes, _generate
from benchmarks.scaling_model import BRIDGES, Setup, build, images_batch
from bridges.cost_model import BridgeShape, EncoderShape, LMShape, predict, predict_from_model

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: two OpenMP threads on a loaded 2-core machine wait on each other at every tiny op."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("bridge", sorted(BRIDGES))
def test_prediction_matches_counted_flops_and_measured_memory(bridge: str) -> None:
    model = build(bridge, Setup(), CPU)
    for n in (1, 8):
        batch = images_batch(model, n, CPU)
        predicted = predict_from_model(model, n, batch.input_ids.shape[1])
        prefill = _generate(model, batch, 1)
        counted = count_flops(prefill)
        assert predicted.prefill_flops == pytest.approx(counted, rel=0.10), (bridge, n)
        assert predicted.parts["encoder"] == pytest.approx(count_flops(lambda b=batch: model.encode_media(b)), rel=0.10)
        assert predicted.kv_cache_bytes == _cache_bytes(model, batch), (bridge, n)
        measured = peak_memory_bytes(forward(prefill), Settings(CPU))
        assert predicted.prefill_peak_bytes == pytest.approx(measured, rel=0.20), (bridge, n)


def test_prefix_and_inject_sequences_and_decode_growth() -> None:
    enc = EncoderShape(patches=16, width=32, layers=2, ffn=64, patch=8)
    lm = LMShape(layers=2, width=64, heads=4, kv_heads=2, head_dim=16, ffn=128, vocab=100)
    prefix = BridgeShape("prefix", tokens=16, flops_per_media=1000)
    inject = BridgeShape("inject", tokens=16, flops_per_media=1000, injected=1, style="hyper", kv_width=32,
                         memory_width=64)
    small, large = predict(enc, prefix, lm, 2, 10), predict(enc, prefix, lm, 8, 16)
    assert small.lm_sequence_length == 10 + 2 * 15 and large.lm_sequence_length == 16 + 8 * 15
    assert predict(enc, inject, lm, 8, 16).lm_sequence_length == 16
    assert large.decode_flops_per_token > small.decode_flops_per_token  # attention over a longer cache
    eager = predict(enc, prefix, lm, 8, 16, fused_attention=False)
    assert eager.prefill_peak_bytes > large.prefill_peak_bytes and eager.prefill_flops == large.prefill_flops
    with pytest.raises(ValueError, match="text_tokens"):
        predict(enc, prefix, lm, 1, 0)


def test_paper_table_command(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert cost.main(["--paper", "--ns", "1", "50", "400", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "llava_interleave (mlp)" in text and "mplug_owl3 (hyper_attention)" in text
    assert (tmp_path / "cost.md").read_text() == text
    table = cost.paper_table((1, 50, 400))
    ratios = {r["n"]: r["prefill_flops"] for r in table["ratios"]}
    assert 1 < ratios[1] < ratios[50] < ratios[400]  # concatenation's prefill grows faster than linearly in N
    limits = table["max_images"]
    mlp, hyper = limits["llava_interleave (mlp)"], limits["mplug_owl3 (hyper_attention)"]
    assert hyper["fused"] > mlp["fused"] > mlp["eager"] > 0 and hyper["eager"] > mlp["eager"]
    assert cost.main(["--paper"]) == 0  # as benchmarks/README.md prints it
    with pytest.raises(SystemExit):
        cost.main([])
