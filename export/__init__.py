"""The export stage: SwiftVR torch model -> ONNX graphs + export.json (docs/export-format.md).

    python -m export ...          export (export/__main__.py)
    python -m export.verify DIR   check an export against the torch model in ONNX Runtime
    export.export_model(...)      the same export from Python (`make engine` uses it)
"""
from pathlib import Path


def export_model(out, res: str, *, checkpoint: str | None = None, preset: str | None = None, seed: int | None = None,
                 scale: float | None = None, input_size: str | None = None, precision: str = "bf16",
                 clip_len: int = 24, dit_overlap: int = 0, dit_parts: int = 1, overwrite: bool = False,
                 progress: bool = True, say=print, dit_shapes: str = "dynamic"):
    """Exports a checkpoint folder, or a preset with seeded random weights, to `out`; returns the
    ExportReport. A bad request raises export.settings.ExportError before anything heavy is imported."""
    from .settings import check_out_dir, make_settings
    source = weight_source(checkpoint, preset, seed)
    settings = make_settings(res, scale, input_size, precision, clip_len, dit_overlap, dit_parts,
                             num_layers=source.cfg.num_layers, dit_shapes=dit_shapes)
    check_out_dir(Path(out), overwrite)
    from .exporter import run_export        # torch.onnx is slow to import: only once the request is good
    g = settings.geometry
    say(f"exporting {source.preset or 'checkpoint'} {g.input_size[0]}x{g.input_size[1]} -> "
        f"{g.output_size[0]}x{g.output_size[1]} (padded {g.padded_size[0]}x{g.padded_size[1]}), "
        f"{settings.precision}, clip_len {settings.clip_len}, DiT latent frames {settings.dit_latent_frames}, "
        f"{settings.dit_parts} DiT part(s), {settings.dit_shapes} DiT shapes")
    return run_export(source, settings, out, overwrite=overwrite, progress=progress)


def weight_source(checkpoint: str | None, preset: str | None, seed: int | None):
    from .settings import ExportError
    from .weights import checkpoint_source, random_source
    if checkpoint is not None:
        if preset is not None or seed is not None:
            raise ExportError("--checkpoint takes its shapes and weights from the folder: "
                              "drop --preset/--random-weights")
        return checkpoint_source(checkpoint)
    if preset is None or seed is None:
        raise ExportError("give --checkpoint DIR, or --preset NAME with --random-weights SEED")
    return random_source(preset, seed)
