"""ONNX Runtime sessions, made one way for every stage that runs the graphs (export.verify, calibration,
engines.verify's reference, the runtime's backend).

onnxruntime is imported only when a session is made: reading a contract needs no ONNX Runtime.
"""


def session_options(ort, threads: int | None = None, basic_optimizations: bool = False):
    """ort: the onnxruntime module. threads: intra-op threads (None: ONNX Runtime's default, one per
    core). basic_optimizations: ORT_ENABLE_BASIC instead of every optimization (FP8 Q/DQ graphs need
    it in ORT 1.31, see calibration/stream.py)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if basic_optimizations
                                        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if threads:
        options.intra_op_num_threads = threads
    # With overlapping lanes three graphs run at once on the same cores; idle pool threads that
    # spin for work take cycles from the other lanes (measured on 2 busy cores: overlap up to ~30%
    # slower with spinning; no slower without it on an idle machine).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3          # errors only: no warnings about unused initializers
    options.add_session_config_entry("optimization.disable_specified_optimizers", QDQ_BROKEN_OPTIMIZERS)
    return options


# ORT 1.31 moves a DequantizeLinear past Reshape/Slice onto a graph output and gives the new
# QuantizeLinear a uint8 zero point with output_dtype int8: session creation fails for INT8 graphs
# from python -m calibration (ReAE states are such outputs). No effect on graphs without Q/DQ.
QDQ_BROKEN_OPTIMIZERS = "QDQPropagationTransformer"
