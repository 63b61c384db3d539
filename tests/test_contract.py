"""contract/graphs.py: the graph contract every stage reads and writes, and the plan the runtime runs.

  * the tiny preset exported in each part layout it allows (1, 2, 3 parts: it has 3 DiT blocks, so
    6 parts cannot be made from it) with dit_overlap 0 and 1, each through a `cpu` bundle and a
    runtime Session, against the 1-part export's frames; 6 parts on a 6-block synthetic export;
  * a TensorRT bundle manifest in the 5B's layout (30 blocks in 3 parts, latent counts 6 and 7) read
    into the TensorRT backend's execution plan, without a GPU;
  * invalid contracts and the errors they give; `python -m engines.inspect` printing the plan.
"""
import contextlib
import copy
import fcntl
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from contract.bundle import read_manifest, write_bundle
from engines.export_folder import read_export
from engines.inspect import main as inspect_main
from engines.make_bundle import make_bundle
from engines.synthetic import SyntheticConfig, write_synthetic_export
from contract import graphs as c

REPO = Path(__file__).resolve().parents[1]


def restore(bundle, frames: np.ndarray) -> np.ndarray:
    from runtime import Session, load_bundle
    with Session(load_bundle(bundle)) as session:
        return np.concatenate([session.push(frames), session.flush()])


# ---- the tiny preset in every part layout ------------------------------------------------------

TINY_RES, TINY_SCALE, TINY_CLIP_LEN = "64x32", 2, 4   # input 32x16; latent counts {1, 2} / {2}
LAYOUTS = [(parts, overlap) for overlap in (0, 1) for parts in (1, 2, 3)]
# Overlap 0 also with one static DiT chain per count (--dit-shapes static, the layout before the
# dynamic frame dim): the dynamic set must restore the same frames. Overlap 1 has one count, so
# its one chain is a static graph either way.
STATIC_LAYOUTS = [(1, 0), (3, 0)]


@contextlib.contextmanager
def trace_each_graph_once(folder: Path):
    """The six exports share graphs: the ReAE graphs depend only on the sizes and clip_len (the same
    for all), a DiT part only on its blocks and latent count. Tracing is most of an export's time
    (~7 s per graph on this machine), so each distinct graph is traced once, saved, and loaded back
    for the next export that needs it (and the seeded ReAE is drawn once); every export still
    writes its own folder and export.json."""
    import onnx_ir as ir
    from export import exporter
    from export.onnx_graph import save
    from export.weights import WeightSource

    made = {}

    def once(make, key_of):
        def traced_or_loaded(*args):
            key = key_of(*args)
            if key in made:
                path, dynamic = made[key]
                return ir.load(path), dynamic
            model, dynamic = make(*args)
            save(model, folder / f"{key}.onnx")
            made[key] = folder / f"{key}.onnx", dynamic
            return model, dynamic
        return traced_or_loaded

    def reae_key(role):
        return lambda reae, s: f"{role}-{s.geometry.input_size}-{s.geometry.output_size}-{s.clip_len}-{s.precision}"
    reaes, draw_reae = {}, WeightSource.reae

    def reae_once(source):
        if repr(source) not in reaes:
            reaes[repr(source)] = draw_reae(source)
        return reaes[repr(source)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(WeightSource, "reae", reae_once)
        patch.setattr(exporter, "encoder_onnx", once(exporter.encoder_onnx, reae_key("encoder")))
        patch.setattr(exporter, "decoder_onnx", once(exporter.decoder_onnx, reae_key("decoder")))
        patch.setattr(exporter, "dit_onnx", once(exporter.dit_onnx, lambda cfg, part, cond, shape, dtype, frames=None,
                                                 opt=None: f"dit-{part.block_range}-{shape}-{frames}-{dtype}"
                                                 .replace(" ", "")))
        yield


def make_layouts(root: Path) -> dict:
    """Export, bundle (cpu) and run every layout: {(parts, overlap[, "static"]): (bundle, frames out, plan lines)}."""
    from export.exporter import run_export
    from export.settings import make_settings
    from export.weights import random_source

    source = random_source("tiny", 0)
    w, h = make_settings(TINY_RES, scale=TINY_SCALE).geometry.input_size
    # 13 frames with clip_len 4: FIRST (8 frames), MIDDLE (4: the DiT call that differs between
    # overlap 0 and 1), LAST (1 frame, front-padded)
    frames = np.random.default_rng(0).integers(0, 256, (13, h, w, 3), dtype=np.uint8)
    results = {}
    (root / "traced").mkdir(exist_ok=True)
    with trace_each_graph_once(root / "traced"):
        for key in LAYOUTS + [(*layout, "static") for layout in STATIC_LAYOUTS]:
            parts, overlap, shapes = (*key, "dynamic")[:3]
            settings = make_settings(TINY_RES, scale=TINY_SCALE, precision="fp32", clip_len=TINY_CLIP_LEN,
                                     dit_overlap=overlap, dit_parts=parts, num_layers=source.cfg.num_layers,
                                     dit_shapes=shapes)
            name = "-".join(map(str, key))
            export = root / f"export-{name}"
            run_export(source, settings, export, overwrite=True, progress=False)
            bundle, _, _ = make_bundle(export, "cpu", out=root / f"tiny-{name}.plan")
            shutil.rmtree(export)               # the bundle holds the graphs
            plan = c.contract_from_manifest(read_manifest(bundle), str(bundle))
            results[key] = (bundle, restore(bundle, frames), plan.describe())
    shutil.rmtree(root / "traced")
    return results


@pytest.fixture(scope="module")
def tiny_layouts(tmp_path_factory):
    """Made once per test run; pytest-xdist workers share it through a lock file."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):      # workers' temp folders share this run's parent
        base = base.parent
    root = base / "contract-layouts"
    root.mkdir(exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "results.pickle").is_file():
            (root / "results.pickle").write_bytes(pickle.dumps(make_layouts(root)))
    return pickle.loads((root / "results.pickle").read_bytes())


@pytest.mark.parametrize("parts,overlap", [l for l in LAYOUTS if l[0] > 1])
def test_split_dit_restores_like_the_whole_dit(tiny_layouts, parts, overlap):
    _, whole, _ = tiny_layouts[1, overlap]
    _, split, plan = tiny_layouts[parts, overlap]
    # The parts compute the same float32 ops as the whole graph, with the block boundary tensor
    # passed between sessions instead of inside one: nothing in the math changes.
    assert split.shape == whole.shape == (13, 32, 64, 3)
    np.testing.assert_array_equal(split, whole)
    chain = "1-2" if overlap == 0 else "2"        # overlap 0: one dynamic chain for counts 1 and 2
    assert [line.split()[1] for line in plan if line.lstrip().startswith("dit F=")] == [f"F={chain}"]
    assert sum(".onnx  " in line and "dit.f" in line for line in plan) == parts


@pytest.mark.parametrize("parts", [p for p, _ in STATIC_LAYOUTS])
def test_one_dynamic_dit_set_restores_like_one_static_set_per_count(tiny_layouts, parts):
    """Real frames through FIRST, MIDDLE (F = 1) and LAST (F = 2) chunks: the dynamic graphs cut
    their F_max tables with integer arithmetic only, so float32 gives the static graphs' frames exactly."""
    _, dynamic, dynamic_plan = tiny_layouts[parts, 0]
    _, static, static_plan = tiny_layouts[parts, 0, "static"]
    np.testing.assert_array_equal(dynamic, static)
    assert [line.split()[1] for line in static_plan if line.lstrip().startswith("dit F=")] == ["F=1", "F=2"]
    assert [line.split()[1] for line in dynamic_plan if line.lstrip().startswith("dit F=")] == ["F=1-2"]


def test_overlap_changes_the_frames(tiny_layouts):
    """Both protocols really ran: overlap 1 gives the MIDDLE chunk's DiT call other context."""
    assert not np.array_equal(tiny_layouts[1, 0][1], tiny_layouts[1, 1][1])


def test_inspect_prints_the_chain_the_runtime_runs(tiny_layouts, capsys):
    bundle = tiny_layouts[3, 0][0]
    assert inspect_main([str(bundle), "--no-verify"]) == 0
    out = capsys.readouterr().out
    plan = out[out.index("execution plan"):]
    assert "dit.f1-2.0.onnx  latents -> hidden.1" in plan
    assert "dit.f1-2.1.onnx  hidden.1 -> hidden.2" in plan
    assert "dit.f1-2.2.onnx  hidden.2, latents -> restored" in plan
    assert plan.index("dit F=1-2") < plan.index("dit.f1-2.0") < plan.index("dit.f1-2.1") < plan.index("dit.f1-2.2")
    assert "GiB in host memory" in plan                        # a cpu bundle: no card to compare with


# ---- 6 parts: a 6-block synthetic export (same random weights whatever the split) ---------------

def test_six_parts_restore_like_one(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (21, 16, 16, 3), dtype=np.uint8)
    out = {}
    for parts in (1, 6):
        export = write_synthetic_export(tmp_path / f"e{parts}", SyntheticConfig(precision="fp32", blocks=6,
                                                                                 dit_parts=parts))
        bundle, manifest, _ = make_bundle(export, "cpu", out=tmp_path / f"b{parts}.plan")
        assert [e["latent_frames"] for e in manifest["engines"]] == [None] + [3] * parts + [None]
        out[parts] = restore(bundle, frames)
    # synthetic weights are drawn in block order however the blocks are split: the same model
    np.testing.assert_array_equal(out[6], out[1])
    names = [p.input_names for p in read_export(tmp_path / "e6").contract.chain(3)]
    assert names == [["latents"]] + [[f"hidden.{b}"] for b in range(1, 5)] + [["hidden.5", "latents"]]


# ---- the 5B's TensorRT bundle: the plan, without a GPU -------------------------------------------

def five_b_contract() -> c.Contract:
    """The 5B at 1080p, bf16, clip_len 24, dit_overlap 0, 3 parts: graphs as the exporter names them."""
    from export.dit import part_ranges
    from export.settings import make_settings
    from swiftvr.reae import decoder_state_shapes, encoder_state_shapes

    s = make_settings("1080p", precision="bf16", clip_len=24, dit_overlap=0, dit_parts=3, num_layers=30)
    (wi, hi), (wo, ho), (wp, hp), (w, h) = (s.geometry.input_size, s.geometry.output_size,
                                            s.geometry.padded_size, s.geometry.latent_size)
    bf16 = "bfloat16"

    def states(shapes):
        return ([c.Tensor(f"state_in.{k}", v, bf16) for k, v in shapes.items()],
                [c.Tensor(f"state_out.{k}", v, bf16) for k, v in shapes.items()])
    enc_in, enc_out = states(encoder_state_shapes(1, hp, wp))
    dec_in, dec_out = states(decoder_state_shapes(1, h, w))
    encoder = c.Graph("encoder", "encoder", "encoder.onnx", (c.Tensor("frames", ("T", hi, wi, 3), "uint8"), *enc_in),
                      (c.Tensor("latents", (1, 48, "T/4", h, w), bf16), *enc_out), {"T": {"min": 4, "opt": 24, "max": 28}})
    decoder = c.Graph("decoder", "decoder", "decoder.onnx", (c.Tensor("latents", (1, 48, "n", h, w), bf16), *dec_in),
                      (c.Tensor("frames", ("4n", ho, wo, 3), "uint8"), *dec_out), {"n": {"min": 1, "opt": 6, "max": 7}})
    dit = {}
    for f in s.dit_latent_frames:
        latents, tokens = c.Tensor("latents", (1, 48, f, h, w), bf16), f * (h // 2) * (w // 2)
        parts = []
        for k, (first, end) in enumerate(part_ranges(30, 3)):
            hidden_in = (c.Tensor(c.hidden_name(first), (1, tokens, 3072), bf16),) if k else ()
            takes = (latents,) if k == 0 else hidden_in + ((latents,) if k == 2 else ())
            gives = (c.Tensor(c.hidden_name(end), (1, tokens, 3072), bf16),) if k < 2 else \
                (c.Tensor("restored", latents.shape, bf16),)
            parts.append(c.Graph(f"dit.f{f}.{k}", "dit", f"dit.f{f}.{k}.onnx", takes, gives, {}, (first, end), f))
        dit[f] = parts
    return c.make_contract(encoder, dit, decoder, s.dit_latent_frames, "5B test layout")


def test_tensorrt_plan_of_a_5b_bundle_without_a_gpu(tmp_path):
    from runtime.backends.tensorrt import execution_plan

    contract = five_b_contract()
    assert sorted(contract.dit) == [6, 7]
    members, engines = [], []
    for graph in contract.graphs():            # engines are opaque bytes to the plan
        (tmp_path / f"{graph.name}.engine").write_bytes(graph.name.encode())
        members.append((f"{graph.name}.engine", tmp_path / f"{graph.name}.engine"))
        engines.append(c.engine_entry(graph, f"{graph.name}.engine"))
    _, state = contract.to_json()
    manifest = {"target": {"gpu": "rtx5090", "flavour": "tensorrt-rtx", "compute_capabilities": ["12.0"]},
                "builder": {"flavour": "tensorrt-rtx", "module": "tensorrt_rtx", "version": "1.2.0.54"},
                "precision": "bf16", "sizes": {"input_size": [480, 270], "output_size": [1920, 1080]},
                "chunk": {"clip_len": 24, "dit_overlap": 0, "dit_latent_frames": [6, 7]},
                "state": state, "engines": engines}
    bundle = write_bundle(tmp_path / "1080p.plan", manifest, members)
    assert [e["name"] for e in read_manifest(tmp_path / "1080p.plan")["engines"]] == \
        ["encoder"] + [f"dit.f{f}.{k}" for f in (6, 7) for k in range(3)] + ["decoder"]

    plan = execution_plan(read_manifest(tmp_path / "1080p.plan"), "1080p.plan")
    for f in (6, 7):
        chain = plan.chain(f)
        assert [p.file for p in chain] == [f"dit.f{f}.{k}.engine" for k in range(3)]
        assert [p.blocks for p in chain] == [(0, 10), (10, 20), (20, 30)]
        values = {"latents"}                    # what TensorRTKernels.dit has when each engine runs
        for part, boundary in zip(chain, ("hidden.10", "hidden.20", "restored")):
            assert set(part.input_names) <= values, (part.name, part.input_names, values)
            assert part.output_names == [boundary]
            values |= set(part.output_names)
        assert chain[1].input_names == ["hidden.10"] and chain[2].input_names == ["hidden.20", "latents"]
        assert chain[0].tensor("latents").shape == (1, 48, f, 68, 120)
    with pytest.raises(c.ContractError, match=r"no DiT graph takes 5 latent frames \(the graphs take \[6, 7\]\)"):
        plan.chain(5)
    for which, graph in (("encoder", plan.encoder), ("decoder", plan.decoder)):
        pairs = plan.state[which]
        assert len(pairs) == sum(n.startswith("state_in.") for n in graph.input_names) > 0
        for p in pairs:
            assert p.input.replace("state_in.", "state_out.") == p.output
            assert graph.tensor(p.input).shape == graph.tensor(p.output).shape == p.shape
    assert plan.encoder.file == "encoder.engine" and plan.decoder.file == "decoder.engine"
    assert bundle["engines"][1]["latent_frames"] == 6


# ---- invalid contracts ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def three_parts(tmp_path_factory) -> Path:
    return write_synthetic_export(tmp_path_factory.mktemp("contract") / "export",
                                  SyntheticConfig(precision="fp32", blocks=3, dit_parts=3))


def broken(meta: dict, change) -> dict:
    meta = copy.deepcopy(meta)
    change(meta)
    return meta


def dit_parts(meta):
    return next(iter(meta["graphs"]["dit"].values()))


BROKEN = {
    "no decoder": (lambda m: m["graphs"].pop("decoder"), r"'graphs' has no 'decoder' graph"),
    "dit as a list": (lambda m: m["graphs"].update(dit=dit_parts(m)), r"graphs.dit must map each latent-frame count"),
    "missing count": (lambda m: m["chunk"].update(dit_latent_frames=[3, 4]),
                      r"calls the DiT with \[3, 4\] latent frames but there is no DiT graph for \[4\]"),
    "chain gap": (lambda m: dit_parts(m)[1]["inputs"][0].update(name="hidden.9"),
                  r"DiT chain for 3 latent frames, part 1 \(dit.1.onnx\) takes \['hidden.9'\]; it must take "
                  r"hidden.1, optionally latents \(the boundary part 0 gives\)"),
    "parts out of order": (lambda m: dit_parts(m).reverse(),
                           r"part 0 \(dit.2.onnx\) takes \['hidden.2', 'latents'\]; it must take latents"),
    "boundary not named by block": (lambda m: [dit_parts(m)[0]["outputs"][0].update(name="hidden.7"),
                                               dit_parts(m)[1]["inputs"][0].update(name="hidden.7")],
                                    r"ends before block 1 but names its boundary 'hidden.7'"),
    "no dtype": (lambda m: dit_parts(m)[1]["outputs"][0].pop("dtype"), r"must have name, shape and dtype"),
    "wrong latent count": (lambda m: [m["graphs"]["dit"].update({"4": m["graphs"]["dit"].pop("3")}),
                                      m["chunk"].update(dit_latent_frames=[4])],
                           r"latents are \[1, 48, 3, 8, 8\], not \[1, C, 4, h, w\]"),
    "unpaired state": (lambda m: m["graphs"]["encoder"]["outputs"].pop(),
                       r"encoder.onnx takes state_in.mem_1 but has no output state_out.mem_1"),
    "state list disagrees": (lambda m: m["state"]["decoder"].clear(), r"state.decoder does not list"),
    "no range": (lambda m: m["graphs"]["decoder"].update(dynamic={}),
                 r"decoder.onnx: input latents has dynamic dim 'n' with no range"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_invalid_export_json_names_the_file_and_the_problem(three_parts, tmp_path, case):
    change, message = BROKEN[case]
    meta = json.loads((three_parts / "export.json").read_text())
    folder = tmp_path / "export"
    shutil.copytree(three_parts, folder)
    (folder / "export.json").write_text(json.dumps(broken(meta, change)))
    with pytest.raises(c.ContractError, match=message) as caught:
        read_export(folder)
    assert str(caught.value).startswith(str(folder / "export.json")), caught.value
    assert len(str(caught.value).splitlines()) == 1


def test_runtime_refuses_a_broken_export_clearly(three_parts, tmp_path):
    from runtime import RuntimeSetupError, load_bundle
    folder = tmp_path / "export"
    shutil.copytree(three_parts, folder)
    meta = json.loads((folder / "export.json").read_text())
    (folder / "export.json").write_text(json.dumps(broken(meta, BROKEN["chain gap"][0])))
    with pytest.raises(RuntimeSetupError, match=r"export.json: DiT chain for 3 latent frames, part 1"):
        load_bundle(folder)


def test_writers_refuse_what_readers_would(three_parts):
    meta, contract = c.read_export_json(three_parts)
    parts = list(contract.chain(3))
    with pytest.raises(c.ContractError, match="the synthetic test: DiT chain for 3 latent frames, part 1"):
        c.make_contract(contract.encoder, {3: [parts[0], parts[2]]}, contract.decoder, [3], "the synthetic test")
    fields = {k: v for k, v in meta.items() if k not in ("format", "version", "graphs", "state")}
    assert c.export_json(fields, contract) == meta       # what export.json holds is what the contract writes


def test_manifest_without_latent_frames_says_rebuild(three_parts, tmp_path):
    bundle, manifest, _ = make_bundle(three_parts, "cpu", out=tmp_path / "b.plan")
    old = broken(manifest, lambda m: [e.pop("latent_frames") for e in m["engines"]])
    with pytest.raises(c.ContractError, match=r"b.plan: DiT engine dit.0 does not say which latent-frame count.*"
                                              r"rebuild the bundle with python -m engines"):
        c.contract_from_manifest(old, str(bundle))


def test_inspect_fails_when_no_plan_can_be_built(three_parts, tmp_path, capsys):
    """A bundle whose DiT engines are listed out of chain order (written around make_bundle's check)."""
    good, manifest, _ = make_bundle(three_parts, "cpu", out=tmp_path / "good.plan")
    members = tmp_path / "members"
    members.mkdir()
    subprocess.run(["tar", "xf", str(good), "-C", str(members)], check=True)
    fields = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "members")}
    fields["engines"][1], fields["engines"][2] = fields["engines"][2], fields["engines"][1]
    bad = tmp_path / "bad.plan"
    write_bundle(bad, fields, [(name, members / name) for name in manifest["members"]])
    assert inspect_main([str(good)]) == 0
    assert "dit.1.onnx  hidden.1 -> hidden.2" in capsys.readouterr().out
    assert inspect_main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert "cannot build an execution plan" in err and "part 0 (dit.1.onnx) takes ['hidden.1']" in err
    done = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "engines.inspect", str(bad)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1 and "part 0 (dit.1.onnx)" in done.stderr
