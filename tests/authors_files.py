"""Builds files in the format of the authors' released HyperNeRFGAN snapshots, opcode by opcode, for the tests.

Nothing here imports the authors' code (none is installed): the files follow the documented layout of their
snapshots. A protocol-4 pickle (FRAME, STACK_GLOBAL, MEMOIZE) of the dict {training_set_kwargs, G, D, G_ema,
augment_pipe}; each module a `torch_utils.persistence._reconstruct_persistent_obj(meta)` call whose meta carries the
module's source text, class name and instance `__dict__` (torch Module internals, the class's attributes,
`_init_args`, `_init_kwargs`); `synthesis.pts_linears` a plain torch ModuleList; every tensor a
`torch._utils._rebuild_tensor_v2` of a `torch.storage._load_from_bytes` storage whose bytes are a legacy torch.save
stream (five protocol-2 pickles, an element count, raw little-endian data); omegaconf DictConfigs with parent
back-references, numpy arrays and scalars, the positional-encoding Embedder with getattr-encoded torch.sin/cos.
"""
from __future__ import annotations

import struct
from typing import Any

import torch

FRAME_SIZE = 64 * 1024


class Global:
    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class Reduce:
    """func(*args), then optional SETITEMS `items` and BUILD `state`."""

    def __init__(self, func: Any, args: tuple = (), state: Any = None, items: list | None = None) -> None:
        self.func, self.args, self.state, self.items = func, args, state, items


class NewObj:
    """cls.__new__(cls, *args), then optional SETITEMS `items` and BUILD `state` (state may refer back to it)."""

    def __init__(self, cls: Any, args: tuple = (), state: Any = None, items: list | None = None) -> None:
        self.cls, self.args, self.state, self.items = cls, args, state, items


class PersId:
    def __init__(self, pid: Any) -> None:
        self.pid = pid


class Raw:
    """Opcodes written as given (for crafted files)."""

    def __init__(self, data: bytes) -> None:
        self.data = data


class PickleWriter:
    """A minimal pickler over the node types above and plain Python values (protocol 2 or 4)."""

    def __init__(self, protocol: int = 4) -> None:
        self.protocol = protocol
        self.chunks: list[bytes] = []
        self.memo: dict[int, int] = {}
        self.keep: list[Any] = []

    def dumps(self, obj: Any) -> bytes:
        self.chunks = [bytes([0x80, self.protocol])]
        self.save(obj)
        self.chunks.append(b".")
        if self.protocol < 4:
            return b"".join(self.chunks)
        out, frame = [self.chunks[0]], bytearray()
        for chunk in self.chunks[1:]:
            if len(chunk) >= FRAME_SIZE or len(frame) + len(chunk) > FRAME_SIZE:
                if frame:
                    out.append(b"\x95" + struct.pack("<Q", len(frame)) + bytes(frame))
                    frame = bytearray()
            if len(chunk) >= FRAME_SIZE:
                out.append(chunk)                      # large data outside any frame, as Python's pickler does
            else:
                frame += chunk
        if frame:
            out.append(b"\x95" + struct.pack("<Q", len(frame)) + bytes(frame))
        return b"".join(out)

    def w(self, data: bytes) -> None:
        self.chunks.append(data)

    def memoize(self, obj: Any) -> None:
        idx = len(self.memo)
        self.memo[id(obj)] = idx
        self.keep.append(obj)
        self.w(b"\x94" if self.protocol >= 4 else (b"q" + bytes([idx]) if idx < 256 else b"r" + struct.pack("<I", idx)))

    def save(self, obj: Any) -> None:
        if id(obj) in self.memo and not isinstance(obj, (bool, int, float, type(None))):
            idx = self.memo[id(obj)]
            self.w(b"h" + bytes([idx]) if idx < 256 else b"j" + struct.pack("<I", idx))
            return
        if obj is None:
            self.w(b"N")
        elif obj is True or obj is False:
            self.w(b"\x88" if obj else b"\x89")
        elif isinstance(obj, int):
            if 0 <= obj < 256:
                self.w(b"K" + bytes([obj]))
            elif 0 <= obj < 65536:
                self.w(b"M" + struct.pack("<H", obj))
            elif -2**31 <= obj < 2**31:
                self.w(b"J" + struct.pack("<i", obj))
            else:
                raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
                self.w(b"\x8a" + bytes([len(raw)]) + raw)
        elif isinstance(obj, float):
            self.w(b"G" + struct.pack(">d", obj))
        elif isinstance(obj, str):
            raw = obj.encode("utf-8")
            self.w((b"\x8c" + bytes([len(raw)]) if self.protocol >= 4 and len(raw) < 256
                    else b"X" + struct.pack("<I", len(raw))) + raw)
            if self.protocol >= 4:
                self.memoize(obj)
        elif isinstance(obj, bytes):
            self.w((b"C" + bytes([len(obj)]) if len(obj) < 256 else b"B" + struct.pack("<I", len(obj))) + obj)
        elif isinstance(obj, tuple):
            if len(obj) == 0:
                self.w(b")")
                return
            if len(obj) > 3:
                self.w(b"(")
            for item in obj:
                self.save(item)
            self.w({1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(obj), b"t"))
        elif isinstance(obj, list):
            self.w(b"]")
            self.memoize(obj)
            self._batch(obj, b"e")
        elif isinstance(obj, dict):
            self.w(b"}")
            self.memoize(obj)
            self._items(list(obj.items()))
        elif isinstance(obj, set):
            self.w(b"\x8f")
            self.memoize(obj)
            self._batch(sorted(obj), b"\x90")
        elif isinstance(obj, Global):
            if self.protocol >= 4:
                self.save(obj.module)
                self.save(obj.name)
                self.w(b"\x93")
            else:
                self.w(b"c" + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
        elif isinstance(obj, Reduce):
            self.save(obj.func)
            self.save(tuple(obj.args))
            self.w(b"R")
            self._finish(obj)
        elif isinstance(obj, NewObj):
            self.save(obj.cls)
            self.save(tuple(obj.args))
            self.w(b"\x81")
            self._finish(obj)
        elif isinstance(obj, PersId):
            self.save(obj.pid)
            self.w(b"Q")
        elif isinstance(obj, Raw):
            self.w(obj.data)
        else:
            raise TypeError(f"cannot write {type(obj).__name__}")

    def _finish(self, obj: Reduce | NewObj) -> None:
        self.memoize(obj)
        if obj.items:
            self._items(obj.items)
        if obj.state is not None:
            self.save(obj.state)
            self.w(b"b")

    def _items(self, items: list) -> None:
        if items:
            self.w(b"(")
            for k, v in items:
                self.save(k)
                self.save(v)
            self.w(b"u")

    def _batch(self, items: list, op: bytes) -> None:
        if items:
            self.w(b"(")
            for item in items:
                self.save(item)
            self.w(op)


# ---------------------------------------------------------------------------------------------------------------------
# Tensors.

STORAGE_NAMES = {torch.float32: "FloatStorage", torch.float64: "DoubleStorage", torch.int64: "LongStorage"}


def storage_blob(flat: torch.Tensor, location: str = "cpu", key: str = "94363880128928",
                 inner: Any = None) -> bytes:
    """A legacy torch.save stream of one storage (the `_load_from_bytes` argument). `inner` replaces the storage
    reference pickle (crafted streams)."""
    def pickle2(obj: Any) -> bytes:
        return PickleWriter(protocol=2).dumps(obj)
    flat = flat.contiguous().reshape(-1)
    ref = PersId(("storage", Global("torch", STORAGE_NAMES[flat.dtype]), key, location, flat.numel(), None))
    header = [0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                            "type_sizes": {"short": 2, "int": 4, "long": 4}}]
    parts = [pickle2(h) for h in header] + [pickle2(ref if inner is None else inner), pickle2([key])]
    return b"".join(parts) + struct.pack("<q", flat.numel()) + flat.numpy().tobytes()


def tensor_node(t: torch.Tensor, parameter: bool = False, location: str = "cpu", storage: torch.Tensor | None = None,
                offset: int = 0) -> Reduce:
    """_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict()) (+ _rebuild_parameter)."""
    flat = t.contiguous().reshape(-1) if storage is None else storage
    size = tuple(t.shape)
    stride = tuple(t.contiguous().stride())
    blob = Reduce(Global("torch.storage", "_load_from_bytes"), (storage_blob(flat, location),))
    node = Reduce(Global("torch._utils", "_rebuild_tensor_v2"),
                  (blob, offset, size, stride, False, Reduce(Global("collections", "OrderedDict"))))
    if parameter:
        node = Reduce(Global("torch._utils", "_rebuild_parameter"),
                      (node, False, Reduce(Global("collections", "OrderedDict"))))
    return node


def odict(items: list) -> Reduce:
    return Reduce(Global("collections", "OrderedDict"), (), items=items)


def numpy_dtype(numpy_core: str = "numpy.core") -> Reduce:
    return Reduce(Global("numpy", "dtype"), ("f8", False, True), state=(3, "<", None, None, None, -1, -1, 0))


def numpy_scalar(value: float, numpy_core: str = "numpy.core") -> Reduce:
    return Reduce(Global(f"{numpy_core}.multiarray", "scalar"), (numpy_dtype(), struct.pack("<d", value)))


def numpy_array(values: list[list[float]], numpy_core: str = "numpy.core") -> Reduce:
    flat = [v for row in values for v in row]
    return Reduce(Global(f"{numpy_core}.multiarray", "_reconstruct"), (Global("numpy", "ndarray"), (0,), b"b"),
                  state=(1, (len(values), len(values[0])), numpy_dtype(), False, struct.pack(f"<{len(flat)}d", *flat)))


# ---------------------------------------------------------------------------------------------------------------------
# Modules.

MODULE_SOURCES = {"networks": "# src/training/networks.py\n", "layers": "# src/training/layers.py\n",
                  "augment": "# src/training/augment.py\n"}


def module_state(params: list[tuple[str, Any]], buffers: list[tuple[str, Any]] = (),
                 children: list[tuple[str, Any]] = (), attrs: dict | None = None, init_args: tuple = (),
                 init_kwargs: dict | None = None, training: bool = False) -> dict:
    """A torch 1.7.1 Module `__dict__` (ten Module keys), the class attributes, then the persistence records."""
    state = {"training": training, "_parameters": odict(list(params)), "_buffers": odict(list(buffers)),
             "_non_persistent_buffers_set": set(), "_backward_hooks": odict([]), "_forward_hooks": odict([]),
             "_forward_pre_hooks": odict([]), "_state_dict_hooks": odict([]), "_load_state_dict_pre_hooks": odict([]),
             "_modules": odict(list(children))}
    state.update(attrs or {})
    if init_kwargs is not None:
        state.update(_init_args=tuple(init_args), _init_kwargs=init_kwargs)
    return state


def persistent(class_name: str, state: dict, source: str = "networks") -> Reduce:
    meta = {"type": "class", "version": 6, "module_src": MODULE_SOURCES[source], "class_name": class_name,
            "state": state}
    return Reduce(Global("torch_utils.persistence", "_reconstruct_persistent_obj"), (meta,))


def easydict(d: dict) -> NewObj:
    return NewObj(Global("dnnlib.util", "EasyDict"), (), items=list(d.items()))


def dict_config(values: dict) -> NewObj:
    """An omegaconf 2.0.6 DictConfig: metadata, parent None, content of AnyNodes pointing back at it."""
    def metadata(cls: str, key: Any) -> NewObj:
        state = {"ref_type": Global("typing", "Any") if cls == "Metadata" else Global("builtins", "dict"),
                 "object_type": None, "optional": True, "key": key, "flags": {},
                 "resolver_cache": Reduce(Global("collections", "defaultdict"), (Global("builtins", "dict"),))}
        if cls == "ContainerMetadata":
            state.update(key_type=None, element_type=None)
        return NewObj(Global("omegaconf.base", cls), (), state=state)

    node = NewObj(Global("omegaconf.dictconfig", "DictConfig"))
    content = {}
    for key, value in values.items():
        if isinstance(value, dict):
            child = dict_config(value)
            child.state["_parent"] = node
            content[key] = child
        else:
            content[key] = NewObj(Global("omegaconf.nodes", "AnyNode"), (),
                                  state={"_metadata": metadata("Metadata", key), "_parent": node, "_val": value})
    node.state = {"_metadata": metadata("ContainerMetadata", None), "_parent": None, "_content": content}
    return node


def generator_cfg(num_layers: int = 4, width: int = 128, n_samples: int = 64, patch_size: int = 64,
                  rank: int = 10) -> dict:
    return {"width": width, "num_layers": num_layers, "perturb": 1.0, "raw_noise_std": 1.0, "n_samples": n_samples,
            "n_importance": 0, "white_bkgd": True, "patch_size": patch_size, "phi_low": -90, "phi_high": 0,
            "theta_low": -180, "theta_high": 180, "render_size": 2.0, "shift": -0.3,
            "fmm": {"enabled": True, "rank": rank, "activation": "demod"}}


def fc_layer(weight: torch.Tensor, bias: torch.Tensor, lr_multiplier: float, kwargs: dict,
             numpy_core: str, activation: str) -> Reduce:
    out_f, in_f = weight.shape
    attrs = {"activation": activation, "weight_gain": numpy_scalar(lr_multiplier / in_f ** 0.5, numpy_core),
             "bias_gain": lr_multiplier if lr_multiplier != 1 else 1}
    return persistent("FullyConnectedLayer", module_state(
        [("weight", tensor_node(weight, True)), ("bias", tensor_node(bias, True))], attrs=attrs,
        init_args=(in_f, out_f), init_kwargs=kwargs), source="layers")


def embedder(numpy_core: str) -> NewObj:
    """The positional-encoding Embedder: identity + sin/cos at 10 frequencies (0-d views of one linspace storage)."""
    freqs = 2.0 ** torch.linspace(0, 9, 10)
    fn_class = Global("torch._C", "_VariableFunctionsClass")
    periodic = [Reduce(Global("builtins", "getattr"), (fn_class, name)) for name in ("sin", "cos")]
    fns = [Reduce(Global("functools", "partial"), (Global("nerf.run_nerf_helpers", "Embedder._identity"),),
                  state=(Global("nerf.run_nerf_helpers", "Embedder._identity"), (), {}, None))]
    for i in range(10):
        freq = tensor_node(freqs[i], storage=freqs, offset=i)
        for p_fn in periodic:
            fn = Global("nerf.run_nerf_helpers", "Embedder._embedding_fn")
            fns.append(Reduce(Global("functools", "partial"), (fn,), state=(fn, (), {"p_fn": p_fn, "freq": freq},
                                                                             None)))
    kwargs = {"include_input": True, "input_dims": 3, "max_freq_log2": 9, "num_freqs": 10, "log_sampling": True,
              "periodic_fns": periodic}
    return NewObj(Global("nerf.run_nerf_helpers", "Embedder"), (),
                  state={"kwargs": kwargs, "embed_fns": fns, "out_dim": 63})


def generator(state: dict[str, torch.Tensor], *, num_layers: int, width: int = 128, z_dim: int = 128,
              w_dim: int = 128, img_resolution: int = 128, n_samples: int = 64, patch_size: int = 64, rank: int = 10,
              numpy_core: str = "numpy.core", ws_location: str = "cuda:0", ws_batch: int = 4,
              ema: bool = True) -> Reduce:
    """A persistent NeRFGenerator holding `state` (their tensor names)."""
    cfg = generator_cfg(num_layers, width, n_samples, patch_size, rank)
    layers = []
    for j in range(num_layers + 1):
        name = "output_linear" if j == num_layers else f"pts_linears.{j}"
        aff = fc_layer(state[f"synthesis.{name}.affine.weight"], state[f"synthesis.{name}.affine.bias"], 1.0,
                       {"bias_init": 0}, numpy_core, "linear")
        w = state[f"synthesis.{name}.weight"]
        layers.append(persistent("NerfSynthesisLayer", module_state(
            [("weight", tensor_node(w, True)), ("bias", tensor_node(state[f"synthesis.{name}.bias"], True))],
            children=[("affine", aff)], attrs={"cfg": dict_config(cfg), "activation": "linear" if j == num_layers
                                                else "relu"},
            init_kwargs={"in_channels": w.shape[1], "out_channels": w.shape[0], "w_dim": w_dim,
                         "activation": "linear" if j == num_layers else "relu", "cfg": cfg})))
    pts = NewObj(Global("torch.nn.modules.container", "ModuleList"), (),
                 state=module_state([], children=[(str(j), m) for j, m in enumerate(layers[:-1])]))
    focal = 0.5 * img_resolution / torch.tan(torch.tensor(0.5 * 0.6911112070083618, dtype=torch.float64)).item()
    K = numpy_array([[focal, 0.0, img_resolution / 2], [0.0, focal, img_resolution / 2], [0.0, 0.0, 1.0]], numpy_core)
    ws = torch.randn(ws_batch, w_dim, generator=torch.Generator().manual_seed(7))
    query = Reduce(Global("functools", "partial"), (Global("nerf.run_nerf", "run_network"),),
                   state=(Global("nerf.run_nerf", "run_network"), (), {"netchunk": 65536}, None))
    embed = Reduce(Global("functools", "partial"), (Global("nerf.run_nerf_helpers", "_embed"),),
                   state=(Global("nerf.run_nerf_helpers", "_embed"), (), {"embedder": embedder(numpy_core)}, None))
    render_kwargs = {"network_query_fn": query, "perturb": 0.0 if ema else 1.0, "ndc": False, "N_samples": n_samples,
                     "N_importance": 0, "use_viewdirs": False, "white_bkgd": True,
                     "raw_noise_std": 0.0 if ema else 1.0, "patch_size": None if ema else patch_size}
    synthesis = persistent("NerfSynthesisNetwork", module_state(
        [], children=[("pts_linears", pts), ("output_linear", layers[-1])],
        attrs={"cfg": dict_config(cfg), "img_resolution": img_resolution, "w_dim": w_dim, "D": num_layers,
               "W": width, "height": img_resolution, "width": img_resolution, "embed_fn": embed, "input_ch": 63,
               "input_ch_views": 0, "skips": [4], "use_viewdirs": False, "network_query_fn": query,
               "fov": 0.6911112070083618, "K": K, "render_kwargs": render_kwargs, "index_channel": False,
               "first_pass": False,
               "current_ws": tensor_node(ws[-1:], location=ws_location, storage=ws.reshape(-1),
                                         offset=(ws_batch - 1) * w_dim)},
        init_kwargs={"w_dim": w_dim, "img_resolution": img_resolution, "cfg": cfg}))
    n_map = len([k for k in state if k.startswith("mapping.fc") and k.endswith(".weight")])
    fcs = [(f"fc{i}", fc_layer(state[f"mapping.fc{i}.weight"], state[f"mapping.fc{i}.bias"], 0.01,
                               {"activation": "lrelu", "lr_multiplier": 0.01}, numpy_core, "lrelu"))
           for i in range(n_map)]
    mapping = persistent("MappingNetwork", module_state(
        [], children=fcs, attrs={"z_dim": z_dim, "c_dim": 0, "w_dim": w_dim, "num_ws": None, "num_layers": n_map,
                                 "w_avg_beta": None},
        init_kwargs={"z_dim": z_dim, "c_dim": 0, "w_dim": w_dim, "num_ws": None, "w_avg_beta": None,
                     "num_layers": n_map}))
    synthesis_kwargs = {"width": width, "num_layers": num_layers, "perturb": 1.0, "raw_noise_std": 1.0,
                        "n_samples": n_samples, "n_importance": 0, "white_bkgd": True, "patch_size": patch_size,
                        "theta_low": -180, "theta_high": 180, "phi_low": -90, "phi_high": 0, "render_size": 2.0,
                        "shift": -0.3, "use_normal": False, "theta_std": 1.0}
    return persistent("NeRFGenerator", module_state(
        [], children=[("synthesis", synthesis), ("mapping", mapping)],
        attrs={"z_dim": z_dim, "c_dim": 0, "w_dim": w_dim, "img_resolution": img_resolution, "img_channels": 3},
        init_kwargs={"z_dim": z_dim, "w_dim": w_dim, "mapping_kwargs": easydict({"num_layers": n_map}),
                     "synthesis_kwargs": easydict(synthesis_kwargs), "cfg": cfg, "c_dim": 0,
                     "img_resolution": img_resolution, "img_channels": 3}))


def generator_tensors(num_layers: int = 4, width: int = 128, z_dim: int = 128, w_dim: int = 128, rank: int = 10,
                      seed: int = 0, mapping_layers: int = 2) -> dict[str, torch.Tensor]:
    """Random tensors under the authors' NeRFGenerator names and shapes (synthesis first, as in their files)."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    out = {}
    for j in range(num_layers + 1):
        c_in = 63 if j == 0 else (63 + width if num_layers >= 6 and j == 5 else width)
        c_out = 4 if j == num_layers else width
        name = "output_linear" if j == num_layers else f"pts_linears.{j}"
        out[f"synthesis.{name}.weight"], out[f"synthesis.{name}.bias"] = rnd(c_out, c_in), rnd(c_out) * 0.1
        out[f"synthesis.{name}.affine.weight"] = rnd((c_in + c_out) * rank, w_dim)
        out[f"synthesis.{name}.affine.bias"] = rnd((c_in + c_out) * rank) * 0.1
    for i in range(mapping_layers):
        out[f"mapping.fc{i}.weight"] = rnd(w_dim, z_dim if i == 0 else w_dim) * 100
        out[f"mapping.fc{i}.bias"] = rnd(w_dim)
    return out


def discriminator_tensors(patch_size: int = 16, channel_base: int = 512, channel_max: int = 16,
                          seed: int = 1) -> dict[str, torch.Tensor]:
    """Random tensors under the authors' Discriminator names (FIR buffers included)."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    ch = lambda r: min(channel_base // r, channel_max)  # noqa: E731
    fir = torch.tensor([1.0, 3.0, 3.0, 1.0])
    fir = torch.outer(fir, fir) / 64
    out = {}
    res = patch_size
    while res >= 8:
        p = f"b{res}."
        out[p + "resample_filter"] = fir.clone()
        if res == patch_size:
            out.update({p + "fromrgb.weight": rnd(ch(res), 3, 1, 1), p + "fromrgb.bias": rnd(ch(res)),
                        p + "fromrgb.resample_filter": fir.clone()})
        out.update({p + "conv0.weight": rnd(ch(res), ch(res), 3, 3), p + "conv0.bias": rnd(ch(res)),
                    p + "conv0.resample_filter": fir.clone(), p + "conv1.weight": rnd(ch(res // 2), ch(res), 3, 3),
                    p + "conv1.bias": rnd(ch(res // 2)), p + "conv1.resample_filter": fir.clone(),
                    p + "skip.weight": rnd(ch(res // 2), ch(res), 1, 1), p + "skip.resample_filter": fir.clone()})
        res //= 2
    out.update({"b4.conv.weight": rnd(ch(4), ch(4) + 1, 3, 3), "b4.conv.bias": rnd(ch(4)),
                "b4.conv.resample_filter": fir.clone(), "b4.fc.weight": rnd(ch(4), ch(4) * 16),
                "b4.fc.bias": rnd(ch(4)), "b4.out.weight": rnd(1, ch(4)), "b4.out.bias": rnd(1)})
    return out


def _nested(state: dict[str, torch.Tensor]) -> dict:
    """{'b64': {'conv0': {'weight': t}}} from flat names."""
    tree: dict = {}
    for key, value in state.items():
        node = tree
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def discriminator(state: dict[str, torch.Tensor], patch_size: int, channel_base: int, channel_max: int,
                  numpy_core: str = "numpy.core") -> Reduce:
    def conv(tree: dict, name: str) -> Reduce:
        params = [("weight", tensor_node(tree["weight"], True))]
        if "bias" in tree:
            params.append(("bias", tensor_node(tree["bias"], True)))
        w = tree["weight"]
        return persistent("Conv2dLayer", module_state(
            params, buffers=[("resample_filter", tensor_node(tree["resample_filter"]))],
            attrs={"activation": "lrelu", "weight_gain": numpy_scalar(1 / (w[0].numel()) ** 0.5, numpy_core)},
            init_args=(), init_kwargs={"in_channels": w.shape[1], "out_channels": w.shape[0],
                                       "kernel_size": w.shape[2]}))

    tree = _nested(state)
    blocks = []
    for name in sorted((k for k in tree if k != "b4"), key=lambda k: -int(k[1:])):
        b = tree[name]
        children = [(c, conv(b[c], c)) for c in ("fromrgb", "conv0", "conv1", "skip") if c in b]
        blocks.append((name, persistent("DiscriminatorBlock", module_state(
            [], buffers=[("resample_filter", tensor_node(b["resample_filter"]))], children=children,
            init_kwargs={"resolution": int(name[1:])}))))
    b4 = tree["b4"]
    mbstd = persistent("MinibatchStdLayer", module_state([], init_kwargs={"group_size": 4, "num_channels": 1}))
    fc = lambda t, act: fc_layer(t["weight"], t["bias"], 1.0, {"activation": act}, numpy_core, act)  # noqa: E731
    epilogue = persistent("DiscriminatorEpilogue", module_state(
        [], children=[("mbstd", mbstd), ("conv", conv(b4["conv"], "conv")), ("fc", fc(b4["fc"], "lrelu")),
                      ("out", fc(b4["out"], "linear"))], init_kwargs={"resolution": 4}))
    kwargs = {"block_kwargs": easydict({}), "mapping_kwargs": easydict({}),
              "epilogue_kwargs": easydict({"mbstd_group_size": 4}), "patch_size": patch_size,
              "channel_max": channel_max, "channel_base": channel_base, "num_fp16_res": 4, "conv_clamp": 256,
              "c_dim": 0, "img_resolution": 128, "img_channels": 3}
    return persistent("Discriminator", module_state([], children=[*blocks, ("b4", epilogue)],
                                                    attrs={"img_resolution": patch_size}, init_kwargs=kwargs))


def augment_pipe(p: float = 0.5) -> Reduce:
    return persistent("AugmentPipe", module_state(
        [], buffers=[("p", tensor_node(torch.tensor(p))), ("Hz_geom", tensor_node(torch.randn(12))),
                     ("Hz_fbank", tensor_node(torch.randn(4, 43)))],
        init_kwargs={"crop": True, "xflip": 1}), source="augment")


def write_snapshot(path, *, G_state: dict[str, torch.Tensor] | None = None, G_ema_state: dict[str, torch.Tensor],
                   D_state: dict[str, torch.Tensor] | None = None, num_layers: int = 4, width: int = 128,
                   z_dim: int = 128, w_dim: int = 128, img_resolution: int = 128, n_samples: int = 64,
                   patch_size: int = 64, rank: int = 10, d_channel_base: int = 512, d_channel_max: int = 16,
                   numpy_core: str = "numpy.core", ws_location: str = "cuda:0", with_augment: bool = True,
                   replace: dict | None = None) -> bytes:
    """Write an authors'-format snapshot; G / D / augment_pipe are left out when not given (a G_ema-only file).
    `replace` swaps top-level entries (crafted files). Returns the bytes written."""
    common = dict(num_layers=num_layers, width=width, z_dim=z_dim, w_dim=w_dim, img_resolution=img_resolution,
                  n_samples=n_samples, patch_size=patch_size, rank=rank, numpy_core=numpy_core,
                  ws_location=ws_location)
    top: dict[str, Any] = {"training_set_kwargs": {"class_name": "training.dataset.ImageFolderDataset",
                                                   "path": "data/carla.zip", "use_labels": False, "max_size": 10000,
                                                   "xflip": True, "resolution": img_resolution}}
    if G_state is not None:
        top["G"] = generator(G_state, ema=False, **common)
    if D_state is not None:
        top["D"] = discriminator(D_state, patch_size, d_channel_base, d_channel_max, numpy_core)
    top["G_ema"] = generator(G_ema_state, ws_batch=1, **common)
    if with_augment and D_state is not None:
        top["augment_pipe"] = augment_pipe()
    top.update(replace or {})
    data = PickleWriter(protocol=4).dumps(top)
    with open(path, "wb") as f:
        f.write(data)
    return data
