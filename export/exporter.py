"""One export: encoder, decoder and the DiT part(s) (one dynamic set, or one per latent-frame count), then export.json.

Everything is written into a temporary sibling folder that is renamed to `out` at the very end, so
a failed or interrupted export leaves nothing at `out`.

Memory: the ReAE (41M parameters) is exported whole. The DiT is streamed part by part (see
export/dit.py): the peak is about one part's weights in the export dtype, one block in float32,
and what the exporter holds while tracing and saving one graph.
"""
from dataclasses import dataclass, field
import gc
import json
import os
import re
from pathlib import Path
import resource
import shutil
import threading
import time

import torch
from torch.export import Dim
from tqdm import tqdm

from .autoencoder import DecoderGraph, EncoderGraph
from contract.graphs import frames_key
from .dit import DiTPart, part_ranges, stream_parts
from .manifest import build_manifest, state_pairs
from .onnx_graph import describe_io, release_weights, save, to_onnx
from .settings import ExportSettings, check_out_dir
from .weights import WeightSource


@dataclass
class GraphStats:
    file: str
    seconds: float
    peak_rss_gb: float           # during this graph's stage (a DiT part's: from reading its weights on)
    bytes: int


@dataclass
class ExportReport:
    out: Path
    manifest: dict
    graphs: list[GraphStats] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_gb: float = 0.0     # whole process (the kernel's peak, as /usr/bin/time reports it)

    def summary(self) -> str:
        lines = [f"{'graph':<24}{'seconds':>9}{'peak RSS GB':>13}{'size MB':>10}"]
        lines += [f"{s.file:<24}{s.seconds:>9.1f}{s.peak_rss_gb:>13.2f}{s.bytes / 1e6:>10.1f}" for s in self.graphs]
        lines.append(f"{'total':<24}{self.seconds:>9.1f}{self.peak_rss_gb:>13.2f}"
                     f"{sum(s.bytes for s in self.graphs) / 1e6:>10.1f}")
        return "\n".join(lines)


class PeakRss:
    """Peak resident memory of this process per stage, sampled by a background thread (every 20 ms).
    The kernel's own peak (VmHWM, what /usr/bin/time and getrusage report) is left untouched and is
    the whole run's figure; this one can be restarted for each stage."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak = interval, 0
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self):
        while not self.stopped.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def restart(self) -> None:
        self.peak = self._rss()

    def gb(self) -> float:
        self.peak = max(self.peak, self._rss())
        return self.peak / 1e9

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


def process_peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def dit_file(frames, part: int, parts: int) -> str:
    """frames: F, or a range key "lo-hi" (a dynamic chain)."""
    return f"dit.f{frames}.onnx" if parts == 1 else f"dit.f{frames}.{part}.onnx"


def run_export(source: WeightSource, settings: ExportSettings, out: str | Path, overwrite: bool = False,
               progress: bool = True) -> ExportReport:
    out = Path(out).absolute()
    check_out_dir(out, overwrite)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    started = time.perf_counter()
    rss = PeakRss()
    try:
        report = _export_into(tmp, source, settings, progress, rss)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        rss.stop()
    report.out = out
    report.seconds = time.perf_counter() - started
    report.peak_rss_gb = process_peak_rss_gb()
    return report


def _move_into_place(tmp: Path, out: Path) -> None:
    if out.exists() and not any(out.iterdir()):
        out.rmdir()
    if out.exists():                       # --overwrite: swap, then drop the old export
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


# ---- the three kinds of graph ----------------------------------------------------------------------
# Each returns the ONNX model and its dynamic dimensions' ranges (export.json `dynamic`).

DIM_SYMBOL_KEY = "swiftvr.dim_symbol"    # ONNX metadata: {"s65": "F"}, read by engines/memory.py
_TORCH_SYMBOL = re.compile(r"\b[su]\d+\b")


def record_dim_symbol(model, dim: str) -> None:
    """Inner tensors keep torch's symbol for the one dynamic Dim (shapes like "6*s65"); note which
    export.json dim it is, so that the engine stage can size every tensor at the profile's max."""
    symbols = {m for v in model.graph.all_nodes() for out in v.outputs if out.shape is not None
               for d in out.shape if not isinstance(d, int) for m in _TORCH_SYMBOL.findall(str(d))}
    if len(symbols) == 1:
        model.metadata_props[DIM_SYMBOL_KEY] = json.dumps({symbols.pop(): dim})

def encoder_onnx(reae, settings: ExportSettings):
    encoder = EncoderGraph(reae, settings.geometry, settings.dtype)
    # Traced with at least 3 latents (k here, n below): torch.export specialises a dimension traced at
    # size 1, and with 2 latents the last MemBlock stage (2 frames) specialises T as well. The graph
    # then accepts every size up to that; export.json's range is what the chunk protocol needs.
    latents = max(3, (settings.clip_len + 4) // 4)
    k = Dim("k", min=1, max=latents)
    with torch.no_grad():
        model = to_onnx(encoder, encoder.example_inputs(4 * latents), encoder.input_names,
                        encoder.output_names, ({0: 4 * k}, tuple(None for _ in encoder.state_shapes)),
                        {("frames", 0): "T", ("latents", 2): "T/4"})
    record_dim_symbol(model, "T/4")
    return model, {"T": {"min": 4, "opt": settings.clip_len, "max": settings.clip_len + 4}}


def decoder_onnx(reae, settings: ExportSettings):
    decoder = DecoderGraph(reae, settings.geometry, settings.dtype)
    n_lat = settings.latents_per_clip
    traced = max(3, n_lat + 1)
    with torch.no_grad():
        model = to_onnx(decoder, decoder.example_inputs(traced), decoder.input_names, decoder.output_names,
                        ({2: Dim("n", min=1, max=traced)}, tuple(None for _ in decoder.state_shapes)),
                        {("latents", 2): "n", ("frames", 0): "4n"})
    record_dim_symbol(model, "n")
    return model, {"n": {"min": 1, "opt": n_lat, "max": n_lat + 1}}


def dit_onnx(cfg, part, cond, latent_shape: tuple[int, ...], dtype: torch.dtype,
             frames_range: tuple[int, int] | None = None, opt_frames: int | None = None):
    """One part for one latent-frame count (static shapes), or for every F in frames_range: then the
    latents' frame dim is "F" and the token count of the part boundaries "K" = F * (h/2) * (w/2)."""
    module = DiTPart(cfg, part, cond, latent_shape, dtype, frames_range)
    lo, hi = module.frames_range
    shape = (*latent_shape[:2], hi, *latent_shape[3:])
    if not module.dynamic:
        with torch.no_grad():
            return to_onnx(module, module.example_inputs(shape), module.input_names, module.output_names), {}
    frames = Dim("F", min=lo, max=hi)
    names = {(module.input_names[0], 2 if module.input_names[0] == "latents" else 1):
             "F" if module.input_names[0] == "latents" else "K"}
    names[(module.output_names[0], 2 if module.projects else 1)] = "F" if module.projects else "K"
    with torch.no_grad():
        model = to_onnx(module, module.example_inputs(shape), module.input_names, module.output_names,
                        module.dynamic_shapes(frames), names)
    record_dim_symbol(model, "F")
    opt = opt_frames or lo
    # "F" is listed for every part (a middle part's inputs name only "K"): the engine stage sizes inner tensors by it.
    dynamic = {"F": {"min": lo, "opt": opt, "max": hi}}
    if any(n.startswith("hidden.") for n in module.input_names + module.output_names):
        dynamic["K"] = {k: v * module.frame_tokens for k, v in dynamic["F"].items()}
    return model, dynamic


def _export_into(folder: Path, source: WeightSource, settings: ExportSettings, progress: bool,
                 rss: PeakRss) -> ExportReport:
    dtype, cfg = settings.dtype, source.cfg
    ranges = part_ranges(cfg.num_layers, settings.dit_parts)
    chains = settings.dit_chains
    # The MIDDLE chunks' count: most DiT calls are made with it, so a dynamic engine is tuned for it.
    middle = settings.latents_per_clip + min(settings.dit_overlap, settings.latents_per_clip)
    report = ExportReport(folder, {})
    bar = tqdm(total=2 + len(ranges) * len(chains), desc="export", unit="graph", disable=not progress)

    def write(file: str, make_graph) -> dict:
        """make_graph() -> (ONNX model, dynamic ranges); written to `file`, described for export.json."""
        bar.set_postfix_str(f"{file}: tracing")
        started = time.perf_counter()
        model, dynamic = make_graph()
        bar.set_postfix_str(f"{file}: writing")
        files = save(model, folder / file)
        ins, outs = describe_io(model)
        release_weights(model)
        del model
        gc.collect()
        stats = GraphStats(file, time.perf_counter() - started, rss.gb(), sum(f.stat().st_size for f in files))
        report.graphs.append(stats)
        bar.update()
        bar.write(f"{file}: {stats.seconds:.1f} s, peak RSS {stats.peak_rss_gb:.2f} GB, {stats.bytes / 1e6:.1f} MB")
        return {"file": file, "inputs": ins, "outputs": outs, "dynamic": dynamic}

    # ---- ReAE ------------------------------------------------------------------------------------
    rss.restart()
    reae = source.reae().to(dtype).eval()
    encoder_entry = write("encoder.onnx", lambda: encoder_onnx(reae, settings))
    rss.restart()
    decoder_entry = write("decoder.onnx", lambda: decoder_onnx(reae, settings))
    del reae
    gc.collect()

    # ---- DiT, part by part -------------------------------------------------------------------------
    latent_w, latent_h = settings.geometry.latent_size
    dit_entries = {frames_key(*r): [] for r in chains}
    rss.restart()
    started = time.perf_counter()
    cond, parts = stream_parts(source, ranges, dtype,
                               on_block=lambda n: bar.set_postfix_str(f"DiT block {n + 1}/{cfg.num_layers}: weights"))
    for part in parts:
        # Reading (or drawing) this part's weights and computing its cross-attention keys/values.
        report.graphs.append(GraphStats(f"(dit part {part.index} weights)", time.perf_counter() - started,
                                        rss.gb(), 0))
        for lo, hi in chains:
            key = frames_key(lo, hi)
            entry = write(dit_file(key, part.index, len(ranges)),
                          lambda: dit_onnx(cfg, part, cond, (1, 48, hi, latent_h, latent_w), dtype, (lo, hi), middle))
            entry["blocks"] = list(part.block_range)
            dit_entries[key].append(entry)
        del part
        gc.collect()
        rss.restart()
        started = time.perf_counter()
    bar.close()

    graphs = {"encoder": encoder_entry, "dit": dit_entries, "decoder": decoder_entry}
    state = {"encoder": state_pairs(encoder_entry), "decoder": state_pairs(decoder_entry)}
    report.manifest = build_manifest(source, settings, graphs, state)
    (folder / "export.json").write_text(json.dumps(report.manifest, indent=2) + "\n")
    return report
