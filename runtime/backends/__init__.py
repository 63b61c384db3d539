"""The backends, one module each: what runs the graphs of a loaded model.

  onnxruntime.py   export folders and `cpu` bundles under ONNX Runtime
  tensorrt.py      TensorRT / TensorRT-RTX bundles on CUDA (needs cuda-python)
  cuda.py          the CUDA runtime calls the TensorRT backend needs (cuda-python, no torch)
  torch/           the swiftvr model itself, on CPU or CUDA

Each provides a runtime.backend.LoadedModel; runtime/load.py picks one. None is imported until used.
"""
