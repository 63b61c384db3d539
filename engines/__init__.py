"""SwiftVR engines: an export folder (docs/export-format.md) -> one bundle file per resolution + GPU.

  profiles.py       the GPU targets (rtx5090 ... h200, cpu) and what each can run
  export_folder.py  reading export.json and its ONNX graphs
  flavours.py       the few places TensorRT-RTX and full TensorRT differ
  build.py          ONNX graph -> engine (checks I/O and fused attention), through the cache
  cache.py          engine cache keyed by content hashes and settings
  make_bundle.py    export + profile -> bundle (python -m engines); the bundle file format itself is
                    contract/bundle.py (write_bundle, read_manifest, open_bundle)
  memory.py         the GPU memory plan of a bundle
  inspect.py        python -m engines.inspect FILE.plan
  verify.py         python -m engines.verify FILE.plan: engines against their ONNX graphs on this GPU
  make.py           make engine: export -> calibrate -> build, as functions
  synthetic.py      small synthetic exports for tests and build-cost measurements
"""
