"""The graph contract between export/ (writes it), calibration/ (keeps it), engines/ (bundles it) and
runtime/ (runs it).

Every stage reads and writes export.json's `graphs` and `state`, and the bundle manifest's copy of
them (its `engines` list and `state`), through this module and nothing else: one parser, one set
of checks, one way to chain the DiT parts. The format is docs/export-format.md.

Standard library only: the runtime imports it without torch, onnx or numpy.

    meta, contract = read_export_json("exports/tiny")      # checked; ContractError says what is wrong
    contract.chain(7)                                       # the DiT parts the runtime runs for F = 7
                                                            # (one dynamic chain may serve F = 6 and 7)
    contract = contract_from_manifest(bundle.manifest, "360p.plan")
"""
import json
from dataclasses import dataclass, replace
from pathlib import Path

FORMAT, VERSION = "swiftvr-export", 1
READABLE_VERSIONS = (1,)
# export.json `quantization` (written by python -m calibration; absent: an unquantized export):
# {"precision": "int8" | "fp8", "record": "calibration.json", "groups": [...], "layers": N, "quality": {...}}.
# The graphs keep their I/O (float tensors in the export `precision`); Q/DQ pairs sit inside them.
QUANTIZATIONS = ("int8", "fp8")
LATENTS, RESTORED, FRAMES = "latents", "restored", "frames"
STATE_IN, STATE_OUT = "state_in.", "state_out."


class ContractError(ValueError):
    """An export.json or bundle manifest whose graphs, DiT chains or states do not fit together."""


def hidden_name(block: int) -> str:
    """The DiT part boundary: the token sequence entering transformer block `block`."""
    return f"hidden.{block}"


def is_hidden(name: str) -> bool:
    return name.startswith("hidden.")


def frames_range(latent_frames) -> tuple[int, int]:
    """A DiT chain's latent-frame counts as an inclusive (lo, hi): from an int F (a static chain), a
    [lo, hi] pair (a chain with a dynamic frame dimension), or export.json's key "F" / "lo-hi"."""
    if isinstance(latent_frames, str):
        lo, _, hi = latent_frames.partition("-")
        latent_frames = (int(lo), int(hi or lo))
    if isinstance(latent_frames, int):
        return latent_frames, latent_frames
    lo, hi = latent_frames
    if not (isinstance(lo, int) and isinstance(hi, int)) or not 1 <= lo <= hi:
        raise ValueError(f"not a latent-frame range: {latent_frames!r}")
    return lo, hi


def frames_key(lo: int, hi: int) -> str:
    """export.json's key of a DiT chain: "7" (static) or "6-7" (one chain for F = 6 and 7)."""
    return str(lo) if lo == hi else f"{lo}-{hi}"


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple          # ints; a string names a dynamic dim (its range is in the graph's `dynamic`)
    dtype: str            # numpy name: uint8, float16, bfloat16, float32

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Graph:
    name: str                       # "encoder", "dit.f6.0", "decoder": how engines and members are named
    role: str                       # "encoder" | "dit" | "decoder"
    file: str                       # export.json: the .onnx file; bundle manifest: the member
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    dynamic: dict                   # {"T": {"min", "opt", "max"}}
    blocks: tuple[int, int] | None = None     # DiT part: transformer blocks [first, end)
    latent_frames: int | tuple[int, int] | None = None   # DiT part: the F of its chain, or (lo, hi)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def tensor(self, name: str) -> Tensor:
        return next(t for t in self.inputs + self.outputs if t.name == name)

    def to_json(self) -> dict:
        """The graph's export.json entry."""
        entry = {"file": self.file, "inputs": [t.to_json() for t in self.inputs],
                 "outputs": [t.to_json() for t in self.outputs], "dynamic": self.dynamic}
        if self.role == "dit":
            entry["blocks"] = list(self.blocks) if self.blocks else None
        return entry

    def describe(self) -> str:
        """"dit.f6.1.engine  hidden.10 -> hidden.20" (state tensors counted, not listed)."""
        def names(tensors, prefix):
            shown = [t.name for t in tensors if not t.name.startswith(prefix)]
            states = len(tensors) - len(shown)
            return ", ".join(shown + ([f"{states} state" + "s" * (states != 1)] if states else []))
        return f"{self.file}  {names(self.inputs, STATE_IN)} -> {names(self.outputs, STATE_OUT)}"


@dataclass(frozen=True)
class StatePair:
    """`state_in.X` of a graph, fed back from its `state_out.X` of the previous chunk."""
    input: str
    output: str
    shape: tuple
    dtype: str

    def to_json(self) -> dict:
        return {"input": self.input, "output": self.output, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Contract:
    """The graphs and how they connect: what a runtime executes, in order."""
    encoder: Graph
    dit: dict[int, tuple[Graph, ...]]          # latent frames F -> the DiT parts, in chain order; the
                                               # F a dynamic chain covers all map to the same parts
    decoder: Graph
    state: dict[str, tuple[StatePair, ...]]    # "encoder", "decoder"

    def chains(self) -> list[tuple[tuple[int, int], tuple[Graph, ...]]]:
        """Each distinct DiT chain once, with the (lo, hi) latent frames it serves, ascending."""
        seen = {}
        for f in sorted(self.dit):
            parts = self.dit[f]
            key = id(parts)
            lo, hi = seen[key][0] if key in seen else (f, f)
            seen[key] = ((min(lo, f), max(hi, f)), parts)
        return list(seen.values())

    def graphs(self) -> list[Graph]:
        """Encoder, the DiT parts of every chain (ascending F), decoder: the order of a bundle's engines."""
        return [self.encoder, *(part for _, parts in self.chains() for part in parts), self.decoder]

    @property
    def encoder_frames_per_call(self) -> int:
        """The most frames the encoder takes in one call (its `frames` dim's max): a chunk with more is
        encoded in slices of this many, the state carried from slice to slice as from chunk to chunk."""
        return dim_max(self.encoder, FRAMES, 0)

    @property
    def decoder_latents_per_call(self) -> int:
        """The most latent frames the decoder takes in one call: a chunk's are decoded in slices of this many."""
        return dim_max(self.decoder, LATENTS, 2)

    def chain(self, frames: int) -> tuple[Graph, ...]:
        """The DiT parts to run, in order, for latents of `frames` frames: feed `latents` and every
        part's outputs to the next part; the last one gives `restored`."""
        if frames not in self.dit:
            raise ContractError(f"no DiT graph takes {frames} latent frames (the graphs take {sorted(self.dit)})")
        return self.dit[frames]

    def to_json(self) -> tuple[dict, dict]:
        """export.json's (`graphs`, `state`)."""
        graphs = {"encoder": self.encoder.to_json(),
                  "dit": {frames_key(*r): [p.to_json() for p in parts] for r, parts in self.chains()},
                  "decoder": self.decoder.to_json()}
        return graphs, {which: [p.to_json() for p in pairs] for which, pairs in self.state.items()}

    def describe(self) -> list[str]:
        """The execution plan, one line per graph: what `python -m engines.inspect` prints."""
        lines = [f"  encoder   {self.encoder.describe()}"]
        for r, parts in self.chains():
            for k, part in enumerate(parts):
                lines.append(f"  {'dit F=' + frames_key(*r) if k == 0 else '':<9} {part.describe()}")
        lines.append(f"  decoder   {self.decoder.describe()}")
        return lines


def dim_max(graph: Graph, tensor: str, axis: int) -> int:
    """The largest size of one dim of a graph's tensor: the int of a static dim, or the "max" of its
    range in the graph's `dynamic` (a TensorRT engine's profile takes nothing larger)."""
    dim = graph.tensor(tensor).shape[axis]
    return dim if isinstance(dim, int) else int(graph.dynamic[dim]["max"])


def with_dim_max(graph: Graph, tensor: str, axis: int, most: int) -> Graph:
    """The graph with one dynamic dim's range capped at `most` ("opt" too): what a TensorRT profile is
    then built for, and what contract.chain slices calls to. Unchanged where the range is smaller."""
    dim = graph.tensor(tensor).shape[axis]
    if isinstance(dim, int) or graph.dynamic[dim]["max"] <= most:
        return graph
    r = graph.dynamic[dim]
    capped = {**r, "max": most, "opt": min(r["opt"], most), "min": min(r["min"], most)}
    return replace(graph, dynamic={**graph.dynamic, dim: capped})



def with_reae_slice(contract: Contract, latents: int) -> Contract:
    """The contract with its encoder taking at most 4 * `latents` frames per call and its decoder at
    most `latents` latent frames: contract/chain.py then runs a chunk's ReAE in slices of that many,
    the state carried from slice to slice, so the activations are a slice's, not a whole chunk's.
    The one place a slice is applied: bundles (engines), export.verify and calibration call it."""
    if latents < 1:
        raise ContractError(f"the ReAE slice must be at least 1 latent frame (4 input frames), got {latents}")
    return replace(contract, encoder=with_dim_max(contract.encoder, FRAMES, 0, 4 * latents),
                   decoder=with_dim_max(contract.decoder, LATENTS, 2, latents))

# ---- building one ------------------------------------------------------------------------------

def make_contract(encoder: Graph, dit: dict, decoder: Graph, latent_frames, where: str) -> Contract:
    """A checked contract, its state pairs read from the graphs' state_in./state_out. tensors.
    dit: {F or (lo, hi) or "lo-hi": parts in chain order}; a range is one chain (a dynamic frame
    dimension) serving every F in it. latent_frames: the F the chunk protocol calls the DiT with
    (chunk.dit_latent_frames)."""
    chains = {}
    for key, parts in dit.items():
        try:
            lo, hi = frames_range(key)
        except ValueError:
            raise ContractError(f"{where}: a DiT chain is keyed by a latent-frame count F or a range "
                                f"'lo-hi', not {key!r}") from None
        parts = tuple(parts)
        check_chain((lo, hi), parts, where)
        for f in range(lo, hi + 1):
            if f in chains:
                raise ContractError(f"{where}: two DiT chains take {f} latent frames")
            chains[f] = parts
    contract = Contract(encoder, chains, decoder,
                        {"encoder": state_pairs(encoder, where), "decoder": state_pairs(decoder, where)})
    check(contract, latent_frames, where)
    return contract


def state_pairs(graph: Graph, where: str) -> tuple[StatePair, ...]:
    outputs = {t.name: t for t in graph.outputs}
    pairs = []
    for t in graph.inputs:
        if t.name.startswith(STATE_IN):
            out = STATE_OUT + t.name[len(STATE_IN):]
            if out not in outputs:
                raise ContractError(f"{where}: {graph.file} takes {t.name} but has no output {out} to feed it back")
            if (outputs[out].shape, outputs[out].dtype) != (t.shape, t.dtype):
                raise ContractError(f"{where}: {graph.file}: {t.name} is {t.dtype} {list(t.shape)} but {out} is "
                                    f"{outputs[out].dtype} {list(outputs[out].shape)}")
            pairs.append(StatePair(t.name, out, t.shape, t.dtype))
    return tuple(pairs)


# ---- checks ------------------------------------------------------------------------------------

def check(contract: Contract, latent_frames, where: str) -> None:
    """Raise ContractError naming `where` and the first thing that does not fit."""
    for graph, takes, gives in ((contract.encoder, FRAMES, LATENTS), (contract.decoder, LATENTS, FRAMES)):
        if takes not in graph.input_names or gives not in graph.output_names:
            raise ContractError(f"{where}: the {graph.role} {graph.file} must take {takes!r} and give {gives!r} "
                                f"(it takes {graph.input_names}, gives {graph.output_names})")
    for graph in contract.graphs():
        for t in graph.inputs:
            for dim in t.shape:
                if isinstance(dim, str) and dim not in graph.dynamic:
                    raise ContractError(f"{where}: {graph.file}: input {t.name} has dynamic dim {dim!r} with no "
                                        f"range in 'dynamic' ({sorted(graph.dynamic)})")
    if contract.encoder_frames_per_call % 4 or contract.decoder_latents_per_call < 1:
        raise ContractError(f"{where}: the encoder must take a multiple of 4 frames per call and the decoder at "
                            f"least 1 latent frame (they take up to {contract.encoder_frames_per_call} and "
                            f"{contract.decoder_latents_per_call})")
    missing = sorted(set(latent_frames) - set(contract.dit))
    if missing:
        raise ContractError(f"{where}: the chunk protocol calls the DiT with {sorted(latent_frames)} latent frames "
                            f"but there is no DiT graph for {missing} (graphs for {sorted(contract.dit)})")


def check_chain(frames, parts, where: str) -> None:
    """Part 0 takes `latents`; part k > 0 takes the `hidden.<b>` part k-1 gives (and may take
    `latents` again); the last part gives `restored`, every other part exactly one `hidden.<b>`.
    frames: F, or (lo, hi) for a chain whose latents' frame dim is dynamic with a range covering it."""
    lo, hi = frames_range(frames)
    what = f"{where}: DiT chain for {frames_key(lo, hi)} latent frames"
    if not parts:
        raise ContractError(f"{what} has no parts")
    given = None                      # the boundary the previous part gave
    for k, part in enumerate(parts):
        last = k == len(parts) - 1
        name = f"{what}, part {k} ({part.file})"
        if part.latent_frames is not None and frames_range(part.latent_frames) != (lo, hi):
            raise ContractError(f"{name} is recorded for {part.latent_frames} latent frames")
        takes = part.input_names
        hidden_in = [n for n in takes if is_hidden(n)]
        expected = [given] if given else []
        if hidden_in != expected or any(n != LATENTS for n in takes if not is_hidden(n)) or \
                (k == 0 and LATENTS not in takes):
            wanted = ", ".join(([LATENTS] if k == 0 else []) + expected + ([] if k == 0 else [f"optionally {LATENTS}"]))
            raise ContractError(f"{name} takes {takes}; it must take {wanted}"
                                + (f" (the boundary part {k - 1} gives)" if given else ""))
        if LATENTS in takes:
            shape = part.tensor(LATENTS).shape
            dim = shape[2] if len(shape) == 5 else None
            covered = (dim, dim) if isinstance(dim, int) else \
                tuple((part.dynamic.get(dim) or {}).get(k) for k in ("min", "max"))
            if len(shape) != 5 or None in covered or not covered[0] <= lo <= hi <= covered[1]:
                want = lo if lo == hi else f"F in {lo}..{hi}"
                span = f" ({dim} in {covered[0]}..{covered[1]})" if isinstance(dim, str) else ""
                raise ContractError(f"{name}: its latents are {list(shape)}{span}, not [1, C, {want}, h, w]")
        gives = part.output_names
        if last:
            if gives != [RESTORED]:
                raise ContractError(f"{name} is the last part and gives {gives}; it must give only {RESTORED!r}")
        elif len(gives) != 1 or not is_hidden(gives[0]):
            raise ContractError(f"{name} gives {gives}; a part before the last must give exactly one "
                                f"'hidden.<block>' boundary for part {k + 1}")
        if part.blocks is not None:
            first, end = part.blocks
            start = parts[k - 1].blocks[1] if k and parts[k - 1].blocks else 0
            if first != start or end <= first:
                raise ContractError(f"{name} has blocks {list(part.blocks)}; it must start at block {start}")
            if not last and gives[0] != hidden_name(end):
                raise ContractError(f"{name} ends before block {end} but names its boundary {gives[0]!r}, "
                                    f"not {hidden_name(end)!r}")
        given = None if last else gives[0]


# ---- export.json -------------------------------------------------------------------------------

def _tensor(t, where: str) -> Tensor:
    if not isinstance(t, dict) or not {"name", "shape", "dtype"} <= set(t):
        raise ContractError(f"{where}: a tensor must have name, shape and dtype, not {t!r}")
    return Tensor(t["name"], tuple(t["shape"]), t["dtype"])


def graph_from_json(entry, role: str, where: str, name: str | None = None, latent_frames=None) -> Graph:
    """A Graph from its export.json entry (or a manifest engine entry, with the member as "file")."""
    need = ("file", "inputs", "outputs")
    if not isinstance(entry, dict) or any(k not in entry for k in need):
        raise ContractError(f"{where}: a graph entry needs {', '.join(need)}; got {entry!r:.200}")
    inputs = tuple(_tensor(t, f"{where} {entry['file']} inputs") for t in entry["inputs"])
    outputs = tuple(_tensor(t, f"{where} {entry['file']} outputs") for t in entry["outputs"])
    blocks = entry.get("blocks")
    return Graph(name or entry["file"].removesuffix(".onnx"), role, entry["file"], inputs, outputs,
                 entry.get("dynamic") or {}, tuple(blocks) if blocks else None, latent_frames)


def contract_from_json(meta: dict, where: str) -> Contract:
    """From export.json (as parsed): its `graphs`, `state` and `chunk.dit_latent_frames`."""
    graphs = meta.get("graphs")
    if not isinstance(graphs, dict):
        raise ContractError(f"{where} has no 'graphs'")
    for role in ("encoder", "dit", "decoder"):
        if role not in graphs:
            raise ContractError(f"{where}: 'graphs' has no {role!r} graph (it has {sorted(graphs)})")
    dit = graphs["dit"]
    if not isinstance(dit, dict) or "file" in dit or not all(isinstance(p, list) for p in dit.values()):
        raise ContractError(f"{where}: graphs.dit must map each latent-frame count to its parts in chain order "
                            f'({{"6": [part, ...], "7": [...]}}), not {json.dumps(dit)[:120]}')
    try:
        ranges = {key: frames_range(key) for key in dit}
    except ValueError:
        raise ContractError(f"{where}: graphs.dit keys must be latent-frame counts F or ranges 'lo-hi', "
                            f"not {sorted(dit)}") from None
    chains = {r: [graph_from_json(p, "dit", f"{where} graphs.dit[{key!r}]", latent_frames=r[0] if r[0] == r[1] else r)
                  for p in dit[key]] for key, r in ranges.items()}
    contract = make_contract(graph_from_json(graphs["encoder"], "encoder", f"{where} graphs.encoder"), chains,
                             graph_from_json(graphs["decoder"], "decoder", f"{where} graphs.decoder"),
                             _latent_frames(meta, where), where)
    _check_recorded_state(contract, meta, where)
    return contract


def _latent_frames(meta: dict, where: str) -> list[int]:
    frames = (meta.get("chunk") or {}).get("dit_latent_frames")
    if not frames:
        raise ContractError(f"{where} has no chunk.dit_latent_frames (the DiT calls the chunk protocol makes)")
    return frames


def _check_recorded_state(contract: Contract, meta: dict, where: str) -> None:
    """The `state` section says what the graphs' state tensors say."""
    recorded = meta.get("state") or {}
    for which, pairs in contract.state.items():
        if recorded.get(which, []) != [p.to_json() for p in pairs]:
            raise ContractError(f"{where}: state.{which} does not list the {which}'s state_in./state_out. "
                                f"tensors ({[p.input for p in pairs]})")


def export_json(fields: dict, contract: Contract) -> dict:
    """export.json: `fields` (format, sizes, chunk, ...) with the contract's graphs and state."""
    graphs, state = contract.to_json()
    meta = {"format": FORMAT, "version": VERSION, **fields, "graphs": graphs, "state": state}
    contract_from_json(meta, "export.json")    # what is written must read back
    return meta


def write_export_json(folder, meta: dict) -> Path:
    path = Path(folder) / "export.json"
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read_json(path: Path, what: str) -> dict:
    try:
        meta = json.loads(Path(path).read_text())
    except ValueError as e:
        raise ContractError(f"{path} is damaged ({what} is not JSON: {e})") from None
    if not isinstance(meta, dict):
        raise ContractError(f"{path}: {what} is not a JSON object")
    return meta


def read_export_json(folder) -> tuple[dict, Contract]:
    """export.json of an export folder, checked: (everything in it, its contract)."""
    path = Path(folder) / "export.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an export folder: no export.json "
                                f"(make one with `python -m export ... --out {folder}`)")
    meta = read_json(path, "export.json")
    if meta.get("format") != FORMAT or meta.get("version") not in READABLE_VERSIONS:
        raise ContractError(f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}; "
                            f"this code reads {FORMAT!r} versions {list(READABLE_VERSIONS)}")
    check_quantization(meta, str(path))
    return meta, contract_from_json(meta, str(path))


def check_quantization(meta: dict, where: str) -> None:
    q = meta.get("quantization")
    if q is None:
        return
    if not isinstance(q, dict) or q.get("precision") not in QUANTIZATIONS or not isinstance(q.get("record"), str):
        raise ContractError(f"{where}: 'quantization' must say its precision ({' or '.join(QUANTIZATIONS)}) and "
                            f"its calibration record file; got {json.dumps(q)[:120]}")


# ---- the bundle manifest -----------------------------------------------------------------------
# A bundle's `engines` list holds every graph in Contract.graphs() order, each with its role, the
# member it is stored as, and (DiT parts) its chain's `latent_frames`; `state` is export.json's.

def engine_entry(graph: Graph, member: str) -> dict:
    """The contract's part of a bundle manifest `engines` entry (engines/ adds files, hashes, build
    records). Inputs with dynamic dims carry the "min"/"opt"/"max" shapes a TensorRT profile uses."""
    inputs = []
    for t in graph.inputs:
        entry = t.to_json()
        if any(isinstance(d, str) for d in t.shape):
            for which in ("min", "opt", "max"):
                entry[which] = [graph.dynamic[d][which] if isinstance(d, str) else d for d in t.shape]
        inputs.append(entry)
    frames = graph.latent_frames
    return {"name": graph.name, "role": graph.role, "member": member, "blocks": list(graph.blocks) if graph.blocks
            else None, "latent_frames": list(frames) if isinstance(frames, tuple) else frames, "inputs": inputs,
            "outputs": [t.to_json() for t in graph.outputs], "dynamic": graph.dynamic}


def contract_from_manifest(manifest: dict, where: str) -> Contract:
    """From a bundle manifest: the plan a runtime executes, checked as export.json is."""
    engines = manifest.get("engines")
    if not isinstance(engines, list):
        raise ContractError(f"{where}: the manifest has no 'engines' list")
    graphs = {"encoder": [], "dit": {}, "decoder": []}
    for i, entry in enumerate(engines):
        role = entry.get("role") if isinstance(entry, dict) else None
        if role not in graphs or "member" not in entry or "name" not in entry:
            raise ContractError(f"{where}: engines[{i}] needs a name, a member and a role of encoder, dit or "
                                f"decoder; got {entry!r:.200}")
        frames = entry.get("latent_frames")
        if role == "dit":
            try:
                lo, hi = frames_range(frames)
            except (TypeError, ValueError):
                raise ContractError(f"{where}: DiT engine {entry['name']} does not say which latent-frame counts it "
                                    f"serves ('latent_frames' is {frames!r}, not F or [lo, hi]); rebuild the bundle "
                                    f"with python -m engines") from None
            frames = lo if lo == hi else (lo, hi)
        graph = graph_from_json({**entry, "file": entry["member"]}, role, f"{where} engines[{i}]", entry["name"],
                                frames)
        if role == "dit":
            graphs["dit"].setdefault((lo, hi), []).append(graph)
        else:
            graphs[role].append(graph)
    for role in ("encoder", "decoder"):
        if len(graphs[role]) != 1:
            raise ContractError(f"{where}: the manifest must have one {role} engine, not {len(graphs[role])}")
    contract = make_contract(graphs["encoder"][0], graphs["dit"], graphs["decoder"][0],
                             _latent_frames(manifest, where), where)
    _check_recorded_state(contract, manifest, where)
    return contract
