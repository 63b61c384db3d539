"""SwiftVR streaming runtime: restore video with a bundle (TensorRT / ONNX Runtime) or the torch model.

    from runtime import load_bundle, Session
    model = load_bundle("engines/360p.plan")     # once; shared by every Session, in any thread
    # or: load_torch(TorchSource(preset="tiny", seed=0), input_size=(480, 270), scale=2)
    with Session(model) as s:
        for frames in source:                    # uint8 RGB [T, H, W, 3]
            sink(s.push(frames))
        sink(s.flush())

CLI: python -m runtime.stream --engine engines/360p.plan INPUT -o OUTPUT   (see runtime/stream.py)
Importing this package does not import torch; only the torch backend does, when it loads a model.
"""
from .backend import LoadedModel
from .backends.torch import TorchSource
from .errors import InputSizeError, MissingPackageError, RuntimeSetupError
from .load import load_bundle, load_torch
from .session import Session

__all__ = ["LoadedModel", "Session", "TorchSource", "load_bundle", "load_torch", "InputSizeError",
           "MissingPackageError", "RuntimeSetupError"]
