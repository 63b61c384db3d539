"""The export stage: SwiftVR torch model -> ONNX graphs + export.json (docs/export-format.md).

    python -m export ...          export (export/__main__.py)
    python -m export.verify DIR   check an export against the torch model in ONNX Runtime
"""
