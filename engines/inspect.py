"""python -m engines.inspect FILE.plan [--json] [--no-verify]

Prints what a bundle holds: its manifest (target, precision, model, sizes, chunk protocol, state
pairs) and one summary per engine, then the execution plan the runtime builds from it (per latent-frame
count, the DiT engines in chain order with the boundary tensors they pass on; exit status 1 if no
plan can be built), the memory plan (engines + activations + I/O buffers the runtime holds on the
GPU; how it fits: the context buffers and which engines share them, the DiT weights streamed and
their cost; the total against the card and budget it was planned for, a warning when it does not
fit), then what could be
checked beyond the manifest:
  * TensorRT engines: deserialized and read with the engine inspector, which needs an NVIDIA GPU of
    a target compute capability (TensorRT-RTX's runtime queries the GPU even to deserialize).
    Without one, the layer counts shown are those the builder recorded from the network definition
    (before TensorRT's fusions), and the output says that the engines themselves were not checked.
  * cpu bundles: the ONNX graphs are read back from the bundle and compared with the manifest.
"""
import argparse
import json
import os
import sys
from collections import Counter

from contract.bundle import BundleError, open_bundle
from engines.flavours import INSTALL_HINTS, import_tensorrt, local_gpu
from engines import host_memory
from engines.memory import describe_plan, gpu_plan, plan_total
from engines.profiles import PROFILES
from contract.graphs import ContractError, contract_from_manifest


def _mib(n):
    return f"{n / 2**20:.1f} MiB"


def _shape(t):
    s = "[" + ",".join(map(str, t["shape"])) + "]"
    if "min" in t:
        s += "  min " + "x".join(map(str, t["min"])) + " opt " + "x".join(map(str, t["opt"])) + \
             " max " + "x".join(map(str, t["max"]))
    return s


def print_manifest(bundle, verified: bool) -> None:
    m = bundle.manifest
    t, b = m["target"], m["builder"]
    print(f"bundle    {bundle.path}  ({_mib(bundle.path.stat().st_size)}, {m['format']} v{m['format_version']}, "
          f"members {'sha256 verified' if verified else 'NOT verified (--no-verify)'})")
    print(f"target    {t['gpu']}  {t['flavour']}  SM {', '.join(t['compute_capabilities']) or '-'}  "
          f"precision {m['precision']}{' + ' + m['quantization']['precision'] + ' Q/DQ' if m.get('quantization') else ''}"
          f"  memory budget "
          f"{str(t['memory_budget_gb']) + ' GB' if t['memory_budget_gb'] else 'host memory'}")
    print(f"builder   {b['module']} {b['version'] or ''}  settings {json.dumps(b['settings'])}")
    model = m.get("model") or {}
    print(f"model     preset {model.get('preset')}  checkpoint_sha256 {model.get('checkpoint_sha256')}  "
          f"export.json sha256 {m['export']['export_json_sha256'][:16]}...  created {m['created']}")
    s = m["sizes"]
    print(f"sizes     {s['resolution']}: input {s['input_size']} -> output {s['output_size']}  padded "
          f"{s['padded_size']}  latent {s['latent_size']}  scale {s['scale']}")
    print(f"chunk     {json.dumps(m.get('chunk'))}")
    for graph, pairs in (m.get("state") or {}).items():
        for p in pairs:
            print(f"state     {graph}: {p['input']} -> {p['output']}  {p['dtype']} {p['shape']}")
    print("engines")
    for e in m["engines"]:
        size = sum(m["members"][f]["size"] for f in e["files"])
        net, build = e["network"], e.get("build")
        blocks = f" blocks {e['blocks']}" if e.get("blocks") else ""
        if "layers" in net:
            what = (f"{net['layers']} network layers, attention {net['attention_input_layers']} in / "
                    f"{net['attention_output_layers']} out for {net['onnx_attention_nodes']} ONNX Attention")
        else:
            what = (f"{net['onnx_nodes']} ONNX nodes (opset {net['opset']}), "
                    f"{net['onnx_attention_nodes']} Attention, weights {_mib(net['weight_bytes'])}")
        print(f"  {e['name']:<9} {e['member']:<16} {_mib(size):>11}  {m['precision']}  {what}{blocks}")
        memory = e.get("memory")
        if memory:
            activation = (f"activations {_mib(memory['activation_bytes'])}" if memory["activation_bytes"] is not None
                          else f"activations ~{_mib(memory['activation_estimate_bytes'])} (ONNX estimate)")
            print(f"            memory: engine {_mib(memory['engine_bytes'])}, {activation}, I/O {_mib(memory['io_bytes'])}")
        if build:
            print(f"            built {build['built_at']} in {build['build_seconds']:.1f} s "
                  f"(parse {build['parse_seconds']:.1f} s), peak RSS {build['peak_rss_bytes'] / 2**30:.2f} GiB")
        for kind in ("inputs", "outputs"):
            for tensor in e[kind]:
                print(f"            {kind[:-1]:<6} {tensor['name']:<16} {tensor['dtype']:<9} {_shape(tensor)}")


def memory_plan_lines(manifest) -> list[str]:
    """The GPU total the runtime will need, against the target's memory (bundles from before the
    memory plan say so)."""
    entries = [e.get("memory") for e in manifest["engines"]]
    if not all(entries):
        return ["memory    not recorded (a bundle from before the memory plan: rebuild it with python -m engines)"]
    profile = PROFILES.get(manifest["target"]["gpu"])
    if manifest["target"]["flavour"] == "onnx":
        lines = describe_plan(plan_total(entries), profile)
        host = manifest.get("host_memory")
        if host:    # measured at build: the measurement is the plan, the estimate is shown beside it
            estimate = lines[0].removeprefix("memory    ")
            return host_memory.describe(host) + [f"          ONNX estimate, for comparison: {estimate}"]
        return lines
    # The runtime lays out its context buffers as the plan did (contract/context_memory.py); bundles
    # from before the plan recorded overlap ran with it on.
    recorded = manifest.get("memory_plan") or {}
    total = gpu_plan(manifest["engines"], recorded.get("overlap", True))
    total.update({k: recorded[k] for k in ("budget_gb", "card_gb") if k in recorded})
    return describe_plan(total, profile)


def print_quantization(m: dict) -> None:
    """The calibration decisions, quantized layers per group and per engine, and the quality report."""
    from calibration.quality import format_report
    q = m["quantization"]
    print(f"quantized {q['precision']}: {q['layers']} layers ({q['method']['library']}, {q['method']['format']}, "
          f"{q['method']['calibrate_method']} ranges from {sum(v['frames_used'] for v in q['videos'] if v['role'] == 'calibration')} "
          f"calibration frames)")
    if q.get("ranges_from"):
        w, h = q["ranges_from"]["input_size"]
        print(f"  ranges and layer choice measured on another export of the same model, {w}x{h} input: "
              f"{q['ranges_from']['path']}")
    for d in q["decisions"]:
        alone = f"alone: PSNR {d['psnr_db_alone']} dB  " if d["psnr_db_alone"] is not None else ""
        if d.get("psnr_db_with_before") is not None and d["psnr_db_with_before"] != d["psnr_db_alone"]:
            alone += f"with the groups before: {d['psnr_db_with_before']} dB  "
        print(f"  {d['group']:<15} {'quantized' if d['quantized'] else 'high precision':<15} {alone}({d['reason']})")
    print(f"  kept high precision by rule: {', '.join(q['kept_high_precision']) or '-'}")
    for e in m["engines"]:
        net = e["network"]
        layer_types = net.get("layer_types") or net.get("op_types") or {}
        qdq = sum(layer_types.get(k, 0) for k in ("QUANTIZE", "DEQUANTIZE", "QuantizeLinear", "DequantizeLinear"))
        print(f"  {e['name']:<9} {q['layers_per_graph'].get(e['name'] + '.onnx', 0):>4} quantized layers, {qdq} Q/DQ layers")
    print("\n".join(format_report(q["quality"])))


def check_tensorrt_engines(bundle) -> list[str]:
    """Deserialize and inspect each engine where this machine can; say plainly where it cannot."""
    m = bundle.manifest
    flavour, ccs = m["target"]["flavour"], m["target"]["compute_capabilities"]
    try:
        trt = import_tensorrt(flavour)
    except ImportError:
        return [f"engines not checked: {flavour} is not installed here ({INSTALL_HINTS[flavour]})"]
    try:
        gpu = local_gpu()
    except RuntimeError:
        return ["engines not checked: deserializing a TensorRT engine needs an NVIDIA GPU and this machine "
                "has none (nvidia-smi); the layer counts above are from the network definition recorded at "
                "build time, before TensorRT's fusions"]
    if gpu["compute_capability"] not in ccs:
        return [f"engines not checked: this machine's {gpu['name']} (SM {gpu['compute_capability']}) is not a "
                f"target of this bundle (SM {', '.join(ccs)})"]
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    lines = [f"engines deserialized on {gpu['name']} (SM {gpu['compute_capability']}) with {flavour} {trt.__version__}"]
    for e in m["engines"]:
        engine = runtime.deserialize_cuda_engine(bundle.view(e["member"]))
        if engine is None:
            lines.append(f"  {e['name']}: FAILED to deserialize (see TensorRT's log above)")
            continue
        info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
        layers = info.get("Layers", [])
        kinds = Counter((layer.get("LayerType", "?") if isinstance(layer, dict) else "?") for layer in layers)
        attention = sum(1 for layer in layers if any(k in json.dumps(layer).lower() for k in ("attention", "mha")))
        io = [f"{engine.get_tensor_name(i)} {engine.get_tensor_dtype(engine.get_tensor_name(i)).name}"
              for i in range(engine.num_io_tensors)]
        low = Counter(p for layer in layers for p in ("FP8", "Int8") if p in json.dumps(layer))
        lines.append(f"  {e['name']}: {len(layers)} engine layers ({dict(kinds.most_common(6))}), "
                     f"{attention} mentioning attention; layers with FP8/INT8 tensors {dict(low) or 0}; "
                     f"I/O {', '.join(io)}")
    return lines


def check_onnx_members(bundle) -> list[str]:
    import onnx
    from onnx import helper

    lines = ["ONNX graphs read back from the bundle (weights in external data not loaded):"]
    for e in bundle.manifest["engines"]:
        model = onnx.load_from_string(bundle.read(e["member"]))
        ops = Counter(n.op_type for n in model.graph.node)

        def io(values):
            out = []
            for v in values:
                t = v.type.tensor_type
                dtype = "bfloat16" if t.elem_type == onnx.TensorProto.BFLOAT16 else \
                    str(helper.tensor_dtype_to_np_dtype(t.elem_type))
                out.append((v.name, dtype, [d.dim_param or d.dim_value for d in t.shape.dim]))
            return out
        want = [(t["name"], t["dtype"], t["shape"]) for t in e["inputs"]] + \
               [(t["name"], t["dtype"], t["shape"]) for t in e["outputs"]]
        same = io(model.graph.input) + io(model.graph.output) == want
        lines.append(f"  {e['name']}: {len(model.graph.node)} nodes, {ops.get('Attention', 0)} Attention, "
                     f"{ops.get('Softmax', 0)} Softmax; I/O {'matches' if same else 'DOES NOT match'} the manifest")
    return lines


def reae_calls_line(plan, chunk: dict) -> str:
    """How the runtime calls the ReAE: whole chunks, or slices (engines.make --reae-slice)."""
    frames, latents = plan.encoder_frames_per_call, plan.decoder_latents_per_call
    longest = max(chunk.get("encoder_frames") or [frames])
    if frames >= longest and latents >= longest // 4:
        return f"reae      whole chunks per call (up to {longest} frames / {longest // 4} latent frames)"
    return (f"reae      in slices: encoder up to {frames} frames, decoder up to {latents} latent frame(s) per call "
            f"(a chunk has up to {longest} frames / {longest // 4} latent frames; state carried slice to slice)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.inspect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of every member")
    a = p.parse_args(argv)
    try:
        bundle = open_bundle(a.bundle, verify=not a.no_verify)
    except (BundleError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with bundle:
        if a.json:
            print(json.dumps(bundle.manifest, indent=1))
            return 0
        print_manifest(bundle, verified=not a.no_verify)
        try:
            plan = contract_from_manifest(bundle.manifest, str(bundle.path))
        except ContractError as e:
            print(f"error: the runtime cannot build an execution plan from this bundle: {e}", file=sys.stderr)
            return 1
        if bundle.manifest.get("quantization"):
            print_quantization(bundle.manifest)
        print("execution plan (per chunk: encoder, the DiT chain for its latent-frame count F, decoder)")
        print("\n".join(plan.describe()))
        print(reae_calls_line(plan, bundle.manifest.get("chunk") or {}))
        print("\n".join(memory_plan_lines(bundle.manifest)))
        flavour = bundle.manifest["target"]["flavour"]
        lines = check_onnx_members(bundle) if flavour == "onnx" else check_tensorrt_engines(bundle)
        print("\n".join(lines))
    return 0


def run_main(argv=None) -> int:
    """main(), quiet when the reader of stdout goes away (`python -m engines.inspect X | head`)."""
    try:
        code = main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Python would report the pipe again while flushing stdout at exit: point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as the shell reports a command ended by a closed pipe


if __name__ == "__main__":
    sys.exit(run_main())
