"""Loading a model once: a bundle file, an export folder, or the torch model itself.

    model = load_bundle("engines/360p.plan")                   # backend from the bundle
    model = load_bundle("exports/tiny", backend="onnxruntime")
    model = load_bundle("engines/1080p.plan", backend="torch")  # same weights and sizes, in torch
    model = load_torch(TorchSource(preset="tiny", seed=0), input_size=(64, 48), scale=2, clip_len=8)

Which backend a path gets unless told: a bundle built for a GPU -> "tensorrt"; a `cpu` bundle or an
export folder -> "onnxruntime". "torch" rebuilds the model the export was made from (its
checkpoint, or its preset and random-weights seed) with the export's sizes and chunk settings.
"""
from pathlib import Path

from contract.bundle import BundleError, open_bundle, read_manifest
from contract.graphs import ContractError, read_json

from .backend import LoadedModel
from .errors import RuntimeSetupError

BACKENDS = ("tensorrt", "onnxruntime", "torch")


def describe_path(path) -> tuple[str, dict]:
    """("bundle" | "export", manifest or export.json) for a model path, or a RuntimeSetupError.
    Their graphs are checked (contract/graphs.py) when a backend builds its plan from them."""
    path = Path(path)
    if path.is_dir():
        if (path / "export.json").is_file():
            try:
                return "export", read_json(path / "export.json", "export.json")
            except ContractError as e:
                raise RuntimeSetupError(str(e)) from None
        if (path / "transformer" / "config.json").is_file():
            raise RuntimeSetupError(f"{path} is a checkpoint folder: run it with --backend torch --checkpoint {path} "
                                    f"--res WxH, or export and build it first (python -m export, python -m engines)")
        raise RuntimeSetupError(f"{path} is neither an export folder (no export.json) nor a bundle file")
    if not path.exists():
        raise RuntimeSetupError(f"no such bundle or export folder: {path} (build one: python -m export ... --out DIR; "
                                f"python -m engines --export DIR --gpu NAME)")
    try:
        return "bundle", read_manifest(path)
    except BundleError as e:
        raise RuntimeSetupError(str(e)) from None
    except (OSError, ValueError) as e:
        raise RuntimeSetupError(f"{path} is not a SwiftVR bundle ({e})") from None


def default_backend(kind: str, meta: dict) -> str:
    if kind == "export" or meta["target"]["flavour"] == "onnx":
        return "onnxruntime"
    return "tensorrt"


def load_bundle(path, backend: str | None = None, *, device: str | None = None, threads: int | None = None,
                precision: str | None = None, verify: bool = True) -> LoadedModel:
    """Load a bundle file or export folder for any number of Sessions.

    device: "cpu", "cuda" or "cuda:N" (default: the backend's choice: a GPU when there is one).
    threads: ONNX Runtime intra-op threads (default: one per core).
    precision: torch backend only (default fp32 on CPU, bf16 on CUDA).
    verify: check every bundle member's sha256 before loading (a damaged bundle is found early).
    """
    kind, meta = describe_path(path)
    backend = backend or default_backend(kind, meta)
    if backend not in BACKENDS:
        raise RuntimeSetupError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return _torch_from_meta(path, meta, device, precision)
    if backend == "onnxruntime":
        from .backends.onnxruntime import load_cpu_bundle, load_export_folder
        if kind == "export":
            return load_export_folder(path, device=device, threads=threads)
        if meta["target"]["flavour"] != "onnx":
            target = meta["target"]
            raise RuntimeSetupError(f"{path} holds {target['flavour']} engines for {target['gpu']}, not "
                                    f"ONNX graphs: run it with the tensorrt backend, or give ONNX Runtime the export "
                                    f"folder or a cpu bundle (python -m engines --export DIR --gpu cpu)")
        with _open(path, verify) as bundle:
            return load_cpu_bundle(bundle, device=device, threads=threads)
    # tensorrt
    if kind == "export" or meta["target"]["flavour"] == "onnx":
        raise RuntimeSetupError(f"{path} holds ONNX graphs, not TensorRT engines: build a bundle for your GPU with "
                                f"python -m engines --export DIR --gpu NAME, or run it with --backend onnxruntime")
    from .backends.tensorrt import TensorRTModel
    gpu = 0
    if device not in (None, "cuda"):
        if not device.startswith("cuda:"):
            raise RuntimeSetupError(f"TensorRT runs on a GPU ('cuda' or 'cuda:N'), not {device!r}")
        gpu = int(device.partition(":")[2])
    with _open(path, verify) as bundle:
        return TensorRTModel(bundle, device=gpu)


def _open(path, verify: bool):
    try:
        return open_bundle(path, verify=verify)
    except BundleError as e:
        raise RuntimeSetupError(str(e)) from None


def _torch_from_meta(path, meta: dict, device, precision) -> LoadedModel:
    from .backends.torch import TorchModel, TorchSource
    model = meta.get("model") or {}
    if model.get("checkpoint"):
        source = TorchSource(checkpoint=model["checkpoint"])
    elif model.get("preset") and model.get("random_weights_seed") is not None:
        source = TorchSource(preset=model["preset"], seed=model["random_weights_seed"])
    else:
        raise RuntimeSetupError(f"{path} does not say which weights it was made from (model: {model}); "
                                f"give --checkpoint DIR or --preset NAME --random-weights SEED instead")
    sizes, chunk = meta.get("sizes", meta), meta["chunk"]
    return TorchModel(source, tuple(sizes["input_size"]), output_size=tuple(sizes["output_size"]),
                      clip_len=chunk["clip_len"], dit_overlap=chunk.get("dit_overlap", 0),
                      precision=precision, device=device)


def load_torch(source, input_size: tuple[int, int], *, scale: float | None = None, output_size=None,
               clip_len: int = 24, dit_overlap: int = 0, precision: str | None = None,
               device: str | None = None, options=None) -> LoadedModel:
    from .backends.torch import TorchModel, TorchOptions
    return TorchModel(source, input_size, scale=scale, output_size=output_size, clip_len=clip_len,
                      dit_overlap=dit_overlap, precision=precision, device=device,
                      options=options or TorchOptions())


def bundles_for_size(folder, input_size: tuple[int, int]) -> list[str]:
    """Bundles and export folders in `folder` made for frames of `input_size` (for error messages)."""
    found = []
    folder = Path(folder)
    if not folder.is_dir():
        return found
    for candidate in sorted(folder.iterdir()):
        try:
            kind, meta = describe_path(candidate)
        except (RuntimeSetupError, OSError, ValueError, KeyError):
            continue
        sizes = meta.get("sizes", meta)
        if tuple(sizes.get("input_size") or ()) == tuple(input_size):
            target = meta["target"]["gpu"] if kind == "bundle" else "export folder"
            found.append(f"{candidate} ({target})")
    return found
