"""What every stage agrees on, in one leaf package that imports no stage (swiftvr, export, calibration,
engines, runtime all import it; it imports none of them).

  graphs.py     the graph contract: export.json's graphs and state pairs, and the bundle manifest's copy
  chunks.py     the chunk protocol (which frames each chunk encodes, its DiT prefix, what it emits) and
                run_chunk, the one per-chunk step every driver runs
  chain.py      the graphs run for a chunk (zero state, encode, the DiT part chain, decode, the state
                hand-over) over a backend's graph runner, and run_stream for a whole clip on numpy
  onnxruntime.py  ONNX Runtime sessions made one way (options, bf16 widening, export and cpu-bundle
                graphs) and the graph runner over them
  bundle.py     the bundle file format: write_bundle, read_manifest, open_bundle
  files.py      content hashes and all-or-nothing writes
  sizes.py      size syntax, named resolutions and the frame geometry (padded and latent grids)

Standard library only, but for numpy where arrays are handled (onnxruntime and onnx are imported
only when a session is made): the runtime imports it without torch, onnx or TensorRT.
"""
