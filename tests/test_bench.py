"""runtime/bench/, the torch backend's speed options and swiftvr/fp8.py, on the CPU (tiny preset).

Tolerances (fp32 on the CPU, against the plain run of the same weights and inputs):
  * fused q/k/v, channels-last ReAE, an explicit SDPA kernel: DiT latents within 1e-4 (measured:
    0 to 3e-6), uint8 frames within 1 level (a rounding flip);
  * FP8 (emulated: the kernel's inputs rounded exactly as on a GPU): frames PSNR >= 35 dB and
    latents relative L2 <= 0.1 (measured on three inputs: 41.5 to 42.0 dB, 0.052 to 0.054).
"""
import json
import math

import pytest
import torch

from runtime import bench
from swiftvr.flops import dit_flops
from runtime.backends.torch import TorchModel, TorchOptions, TorchSource, set_fused_qkv
from runtime.backends.torch.cudagraphs import graph_key
from runtime.nest import flatten, rebuild
from runtime.errors import RuntimeSetupError
from swiftvr import geometry
from swiftvr.config import get_preset
from swiftvr.fp8 import (FP8_MAX, FP8Config, FP8Linear, dit_linear_names, quantize_dit_linears, quantize_rows,
                         quantize_weight)
from swiftvr.random_checkpoint import random_model

SOURCE = TorchSource(preset="tiny", seed=0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a small CPU shared with other work a two-thread OpenMP team spends most
    of its time waiting for a descheduled partner (measured: 6 s against 0.4 s for the same chunks)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
LATENT_TOL = 1e-4
FP8_PSNR_DB = 35.0
FP8_LATENT_REL = 0.1


# ---- FLOP count --------------------------------------------------------------------------------
def test_flop_count_matches_a_hand_count():
    cfg = get_preset("tiny").dit          # dim 2 heads x 64 = 128, FFN 256, 3 layers, windows 4x4 tokens
    grid = (2, 4, 6)                      # 48 tokens; 6 columns > 4: two windows per layer, plain or shifted
    for shifted in (False, True):
        layout = geometry.window_layout(grid, cfg.self_attn_window_hw, shifted)
        assert (layout.num_windows, layout.tokens_per_window) == (2, 32)
    tokens, dim, ffn, layers, prompt = 48, 128, 256, 3, 16
    linears = 6 * (2 * tokens * dim * dim) + 2 * (2 * tokens * dim * ffn)   # q k v out, cross q out; FFN
    windows = 2 * 2 * (2 * 32 * 32 * dim)                                     # 2 windows x (QK^T, PV)
    cross = 2 * (2 * tokens * prompt * dim)                                   # QK^T, PV against the prompt
    edges = 2 * (2 * tokens * (48 * 4) * dim)                                 # patch embedding, output head
    flops = dit_flops(cfg, grid, prompt_len=prompt)
    assert flops["total"] == layers * (linears + windows + cross) + edges == 56_229_888
    assert flops["fp8_linears"] == layers * linears
    assert flops["tokens"] == tokens


def test_flop_count_matches_torch_flop_counter():
    """torch's own counter on the real DiT call (math SDPA, so attention is counted as two bmm)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = random_model("tiny", 0)
    transformer = model.transformer
    z = torch.randn(1, 48, 2, 8, 12)
    grid = transformer.token_grid(z.shape)
    cond = transformer.conditioning(model.prompt_emb)
    plan = transformer.grid_plan(grid)
    with FlopCounterMode(display=False) as counter, torch.inference_mode(), sdpa_kernel([SDPBackend.MATH]):
        transformer.restore(z, cond, plan)
    assert counter.get_total_flops() == dit_flops(transformer.cfg, grid, model.prompt_emb.shape[0])["total"]


def test_5b_flops_per_frame_at_1080p():
    """The issue's ceiling: about 5 TFLOP of DiT matmul per output frame at 1080p."""
    flops = dit_flops(get_preset("5b").dit, (6, 34, 60), 512)
    assert 4.9e12 < flops["total"] / 24 < 5.1e12


# ---- FP8 ---------------------------------------------------------------------------------------
def test_quantize_rows_rounds_within_half_an_fp8_step():
    x = torch.randn(64, 96) * torch.logspace(-3, 3, 64)[:, None]      # rows of very different sizes
    q, scale = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (64, 1)
    assert torch.equal(q.float().abs().amax(dim=1), torch.full((64,), FP8_MAX))   # each row's amax -> 448
    # e4m3 has 3 mantissa bits: |error| <= 2^-4 of the value's binade top, <= amax * 2^-4.
    error = (q.float() * scale - x).abs()
    assert (error <= x.abs().amax(dim=1, keepdim=True) * 2 ** -4 * (1 + 1e-6)).all()
    assert error.max() > 0


@pytest.mark.parametrize("scaling", ["row", "tensor"])
def test_quantize_weight_scales(scaling):
    w = torch.randn(32, 48) * torch.linspace(0.1, 10, 32)[:, None]
    q, scale = quantize_weight(w, scaling)
    assert scale.shape == (32, 1)
    if scaling == "row":
        assert torch.equal(q.float().abs().amax(dim=1), torch.full((32,), FP8_MAX))
    else:
        assert torch.all(scale == scale[0]) and q.float().abs().max() == FP8_MAX
    assert ((q.float() * scale - w).abs() <= w.abs().max() * 2 ** -4).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_scaled_mm_call_matches_the_emulated_kernel(dtype, tol):
    """The exact torch._scaled_mm call made on a GPU (operand layout, [M,1] and [1,N] scales, bias)
    run by torch's CPU implementation, against the emulation."""
    linear = torch.nn.Linear(64, 48).to(dtype)
    x = torch.randn(5, 7, 64).to(dtype)
    emulated = FP8Linear.from_linear(linear, FP8Config(kernel="emulated"))
    kernel = FP8Linear.from_linear(linear, FP8Config(kernel="scaled_mm"))
    a, b = emulated(x), kernel(x)
    assert a.shape == b.shape == (5, 7, 48) and a.dtype == b.dtype == dtype
    assert ((a.float() - b.float()).abs().max() / a.float().abs().max()) < tol
    # and both are close to the unquantised linear (~2^-4 rounding of inputs and weights)
    ref = linear(x).float()
    assert ((a.float() - ref).norm() / ref.norm()) < 0.08


def test_quantize_dit_linears_replaces_the_per_token_linears_only():
    model = random_model("tiny", 0)
    transformer = model.transformer
    set_fused_qkv(transformer, True)
    names = quantize_dit_linears(transformer, FP8Config())
    assert names == dit_linear_names(transformer) and len(names) == 6 * len(transformer.blocks)
    block = transformer.blocks[0]
    for module in (block.attn1.to_qkv, block.attn1.to_out[0], block.attn2.to_q, block.attn2.to_out[0],
                   block.ffn.net[0].proj, block.ffn.net[2]):
        assert isinstance(module, FP8Linear)
    for module in (block.attn2.to_k, block.attn2.to_v, transformer.proj_out):
        assert type(module) is torch.nn.Linear
    assert quantize_dit_linears(transformer, FP8Config()) == []          # already done
    with pytest.raises(RuntimeSetupError, match="FP8"):
        set_fused_qkv(transformer, False)


# ---- the options: same restored frames as the plain run ----------------------------------------
def test_fused_qkv_splits_back_to_the_same_weights():
    model = random_model("tiny", 0)
    before = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    set_fused_qkv(model.transformer, True)
    assert "blocks.0.attn1.to_qkv.weight" in model.transformer.state_dict()
    set_fused_qkv(model.transformer, False)
    after = model.transformer.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_cuda_only_options_are_refused_on_a_cpu():
    for options in (TorchOptions(cuda_graphs=True), TorchOptions(cudnn_benchmark=True)):
        with pytest.raises(RuntimeSetupError, match="CUDA"):
            TorchModel(SOURCE, (16, 16), output_size=(64, 64), clip_len=4, options=options, device="cpu")


def _inputs(seed: int):
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8, generator=gen)
    middle = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8, generator=gen)
    wide = torch.randn(1, 48, 2, 8, 12, generator=gen)     # a DiT call with two windows per layer
    return first, middle, wide


def _restore(model, options, first, middle, wide):
    """A stream's FIRST and a MIDDLE chunk through the backend's stage functions, plus one wider DiT call."""
    tm = TorchModel(SOURCE, (16, 16), output_size=(64, 64), clip_len=4, options=options, model=model, device="cpu")
    k = tm.kernels()
    lq, enc = k.encode(first, None)
    hq = k.dit(lq)
    frames, dec = k.decode(hq, None)
    lq2, enc = k.encode(middle, enc)
    hq2 = k.dit(lq2)
    frames2, dec = k.decode(hq2, dec)
    return [hq, hq2, k.dit(wide)], [frames, frames2]


@pytest.fixture(scope="module")
def plain_run():
    model = random_model("tiny", 0)
    inputs = _inputs(1)
    return model, inputs, _restore(model, TorchOptions(), *inputs)


@pytest.mark.parametrize("options", [TorchOptions(fused_qkv=True), TorchOptions(channels_last=True),
                                     TorchOptions(attention="flash"), TorchOptions(attention="math"),
                                     TorchOptions(fused_qkv=True, channels_last=True, attention="math")],
                         ids=lambda o: o.describe())
def test_option_restores_the_same_frames(plain_run, options):
    model, inputs, (latents, frames) = plain_run
    got_latents, got_frames = _restore(model, options, *inputs)
    for got, want in zip(got_latents, latents):
        assert (got - want).abs().max() <= LATENT_TOL
    for got, want in zip(got_frames, frames):
        assert got.shape == want.shape and (got.int() - want.int()).abs().max() <= 1
    if options.channels_last:
        conv = model.reae.decoder[1]
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_fp8_emulated_stays_close_to_fp32(plain_run):
    _, inputs, (latents, frames) = plain_run
    model = random_model("tiny", 0)           # its own: FP8 lets the fp32 weights go
    got_latents, got_frames = _restore(model, TorchOptions(fp8="row"), *inputs)
    assert any(isinstance(m, FP8Linear) and m.kernel == "emulated" for m in model.transformer.modules())
    for got, want in zip(got_latents, latents):
        assert torch.isfinite(got).all()
        assert 0 < ((got - want).norm() / want.norm()) <= FP8_LATENT_REL
    diff = torch.cat([(g.float() - w.float()).flatten() for g, w in zip(got_frames, frames)])
    psnr = 10 * math.log10(255 ** 2 / diff.square().mean())
    assert psnr >= FP8_PSNR_DB
    with pytest.raises(RuntimeSetupError, match="FP8"):
        TorchModel(SOURCE, (16, 16), output_size=(64, 64), clip_len=4, model=model, device="cpu")


def test_overlapped_threads_give_the_sequential_outputs(plain_run):
    """The bench's own stream driver: three chunks in flight on thread lanes = one at a time."""
    model, (first, middle, _), _ = plain_run
    tm = TorchModel(SOURCE, (16, 16), output_size=(64, 64), clip_len=4, model=model, device="cpu")
    chunks = [first, middle, middle.flip(0), middle]
    one = bench.bench_stream(tm, tm.kernels(), chunks, overlap=False, in_flight=1, keep=True)
    three = bench.bench_stream(tm, tm.kernels(), chunks, overlap=True, in_flight=3, keep=True)
    assert len(one.marks) == len(three.marks) == 4 and all(isinstance(m, float) for m in three.marks)
    assert bench.elapsed_ms(three.marks, 0, -1) > 0
    for (_, hq_a, frames_a), (_, hq_b, frames_b) in zip(one.outputs, three.outputs):
        assert torch.equal(hq_a, hq_b) and torch.equal(frames_a, frames_b)
    assert [len(one.stage_ms[s]) for s in bench.STAGES] == [4, 4, 4]


def test_graph_inputs_flatten_and_rebuild():
    state = {"mem_4": torch.ones(1, 2), "mem_5": torch.zeros(3)}
    nest = (torch.arange(3), state, None)
    tensors, structure = flatten(nest)
    assert len(tensors) == 3
    rebuilt = rebuild(structure, [t + 1 for t in tensors])
    assert torch.equal(rebuilt[0], torch.arange(3) + 1) and list(rebuilt[1]) == ["mem_4", "mem_5"]
    assert rebuilt[2] is None and torch.equal(rebuilt[1]["mem_5"], torch.ones(3))
    # a graph is specific to shapes, dtypes and structure, not to values or strides
    assert graph_key(nest) == graph_key((torch.arange(3) * 2, state, None))
    assert graph_key(nest) != graph_key((torch.arange(4), state, None))
    assert graph_key(nest) != graph_key((torch.arange(3), None, None))
    assert graph_key((torch.ones(2, 3).t(),)) == graph_key((torch.ones(3, 2),))


# ---- the whole bench ---------------------------------------------------------------------------
ALL_BUT_COMPILE = "eager,fused-qkv,channels-last,cudnn-benchmark,attention,cuda-graphs,fp8"


@pytest.fixture(scope="module")
def bench_report(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = ["--preset", "tiny", "--res", "32x32", "--device", "cpu", "--clip-len", "4", "--repeats", "1",
            "--warmup", "0", "--first-repeats", "1", "--rotate", "2", "--variants", ALL_BUT_COMPILE,
            "--json", str(path)]
    assert bench.main(argv) == 0
    return json.loads(path.read_text()), argv


def test_bench_json_has_every_number(bench_report):
    report, argv = bench_report
    assert report["command"] == "python -m runtime.bench " + " ".join(argv)
    assert {"torch", "python", "cpu", "cpu_count"} <= set(report["machine"])
    assert report["ceilings"]["matmul"]["tflops"] > 0
    res = report["resolutions"]["32x32"]
    assert res["input_size"] == [8, 8] and res["output_size"] == [32, 32] and res["dit_token_grid"] == [1, 1, 1]
    assert res["dit_flops"]["total"] == dit_flops(get_preset("tiny").dit, (1, 1, 1), 16)["total"]
    ran = {"eager", "fused-qkv", "channels-last", "attention", "fp8"}
    assert set(report["variants"]) == set(ALL_BUT_COMPILE.split(","))
    for name in ran:
        r = report["variants"][name]["32x32"]
        assert r["status"] == "ran", (name, r)
        assert all(r["stages_ms"][s] > 0 for s in ("encode", "dit", "decode"))
        assert r["sequential"]["fps"] > 0 and r["overlapped"]["fps"] > 0 and r["first_chunk_ms"] > 0
        assert r["sequential"]["peak_memory"] is None            # no device memory counter on a CPU
        assert r["dit_tflops"] > 0 and r["setup_overhead_s"] >= 0
    assert report["variants"]["eager"]["32x32"]["numerics"] == "baseline"
    assert report["variants"]["eager"]["32x32"]["attention_ran"]        # the profiler saw SDPA run
    assert {e["variant"] for e in report["ladder"]} == set(ALL_BUT_COMPILE.split(","))
    assert report["attention_trial"]["pick"] in ("flash", "math")
    assert report["variants"]["attention"]["32x32"]["options"]["attention"] == report["attention_trial"]["pick"]


def test_bench_skips_cuda_only_variants_with_the_reason(bench_report):
    report, _ = bench_report
    for name in ("cudnn-benchmark", "cuda-graphs"):
        r = report["variants"][name]["32x32"]
        assert r["status"] == "skipped" and "CUDA" in r["reason"]
    fp8 = report["variants"]["fp8"]["32x32"]
    assert fp8["emulated"] is True and fp8["fp8_kernel"] == "emulated"
    assert not next(e for e in report["ladder"] if e["variant"] == "fp8")["kept"]   # never kept: no speed claim


def test_bench_numerics_against_eager(bench_report):
    report, _ = bench_report
    for name in ("fused-qkv", "channels-last", "attention"):
        num = report["variants"][name]["32x32"]["numerics"]
        assert num["latents_max_abs"] <= LATENT_TOL and num["frames_max_abs"] <= 1 and num["latents_nonfinite"] == 0
    num = report["variants"]["fp8"]["32x32"]["numerics"]
    assert num["frames_psnr_db"] >= FP8_PSNR_DB and 0 < num["latents_rel_l2"] <= FP8_LATENT_REL


def test_bench_prints_the_table_last(bench_report):
    report, _ = bench_report
    table = bench.format_table(report).splitlines()
    assert table[0].split()[:6] == ["res", "variant", "kept", "enc", "ms", "DiT"]
    assert len(table) == 1 + len(report["variants"])
    assert "skipped" in next(line for line in table if "cuda-graphs" in line)


def test_keep_rule_needs_a_gain_beyond_the_noise():
    def run(ms, spread=0.01):
        return {"status": "ran", "sequential": {"chunk_ms": ms, "spread": spread}}
    best = {"a": run(100.0), "b": run(200.0)}
    assert bench.pays({"a": run(90.0), "b": run(180.0)}, best, 0.02)[0]
    assert not bench.pays({"a": run(99.0), "b": run(198.0)}, best, 0.02)[0]            # 1%: below threshold
    assert not bench.pays({"a": run(90.0, 0.2), "b": run(180.0)}, best, 0.02)[0]       # inside the noise
    assert not bench.pays({"a": run(90.0), "b": {"status": "failed"}}, best, 0.02)[0]
    emulated = dict(run(10.0), emulated=True)
    assert not bench.pays({"a": emulated, "b": emulated}, best, 0.02)[0]
