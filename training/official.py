"""The authors' released HyperNeRFGAN snapshots (gmum/HyperNeRFGAN): read them safely, rebuild them as our networks.

Their `network-snapshot-*.pkl` (e.g. the CARLA and ShapeNet cars, planes and chairs models their README links) is
one pickle of a dict {training_set_kwargs, G, D, G_ema, augment_pipe}. Each module is a StyleGAN2-ADA-style
persistent object: a call of `torch_utils.persistence._reconstruct_persistent_obj` whose argument carries the full
source text of the module that defines the class, which a plain `pickle.load` executes. This reader executes nothing
from the file and imports none of the modules it names. It reads the file with dnnlib.safe_pickle's Unpickler and
an explicit table of exact (module, name) pairs (`GLOBALS`): the tensors, OrderedDicts and numpy values go to that
module's stand-ins (a storage's nested legacy `torch.save` stream is parsed there, never unpickled with full power,
and its location tag, `cuda:0` in GPU-written files, is ignored: everything loads on the CPU); every other global the
authors' files name becomes an inert record of what the file says; any global outside the table is refused with an
error that names it.

The records are then mapped onto this project's `Generator` and `Discriminator` with the authors' configuration
carried over (layers, width, rank, samples per ray, render size, pose prior, patch size, field of view) and their
integer pixel-centre convention (`pixel_center=0`), so that a render of ours equals theirs. Their mapping network
keeps no `w_avg`; it is estimated here as the mean of w over W_AVG_SAMPLES latents drawn with seed W_AVG_SEED, so that
truncation (psi != 1) works.
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
import pickletools
import re
from typing import Any, Callable

import torch

from dnnlib import safe_pickle
from dnnlib.util import EasyDict, UserError

W_AVG_SAMPLES = 100_000    # latents averaged for the estimated w_avg
W_AVG_SEED = 0
AUTHORS_FORMAT = "gmum/HyperNeRFGAN network snapshot"
PERSISTENT_GLOBAL = ("torch_utils.persistence", "_reconstruct_persistent_obj")


class AuthorsSnapshotError(pickle.UnpicklingError):
    """The file is not a snapshot this reader accepts (a foreign global, a malformed storage, wrong structure)."""


# ---------------------------------------------------------------------------------------------------------------------
# Inert stand-ins for what the pickle names.

class Record:
    """Stand-in for an instance of a class named in the file: keeps the arguments and state the pickle gives it.

    Creating one (REDUCE, NEWOBJ), filling it (BUILD, SETITEMS, APPENDS) or reading it runs no code of the file."""

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Record":
        self = super().__new__(cls)
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, []
        return self

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"<{self.global_name} record>"


class DictRecord(dict):
    """Stand-in for a dict subclass named in the file (dnnlib.util.EasyDict): a plain dict of its items."""


class Symbol:
    """Stand-in for a function or constant the file names (never called)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


class PersistentObject:
    """What `_reconstruct_persistent_obj(meta)` would rebuild: the class name, its instance `__dict__` and the sha256
    of the embedded module source (the source itself is dropped unread)."""

    def __init__(self, meta: Any) -> None:
        if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str) \
                or not isinstance(meta.get("state"), dict):
            raise AuthorsSnapshotError("a persistent object whose description is not {type: 'class', class_name, "
                                       "state, ...}")
        self.class_name: str = meta["class_name"]
        self.state: dict = meta["state"]
        src = meta.get("module_src")
        self.module_src_sha256 = hashlib.sha256(src.encode("utf-8")).hexdigest() if isinstance(src, str) else None

    def __setstate__(self, state: Any) -> None:
        raise AuthorsSnapshotError("the file assigns state to a persistent object after building it")

    def __repr__(self) -> str:
        return f"<persistent {self.class_name}>"


def _getattr_symbol(obj: Any, name: Any) -> Symbol:
    """`builtins.getattr(torch._C._VariableFunctionsClass, 'sin')` encodes torch.sin: recorded, never looked up."""
    if not isinstance(obj, Symbol) or not isinstance(name, str):
        raise AuthorsSnapshotError("builtins.getattr applied to something other than a named constant")
    return Symbol(f"{obj.name}.{name}")


class PartialRecord(Record):
    global_name = "functools.partial"


def _defaultdict(*args: Any) -> dict:
    """`collections.defaultdict(dict)` (omegaconf's resolver cache): an empty plain dict; the factory is dropped."""
    return {}


def _record_class(name: str) -> type:
    return type(name.rpartition(".")[2] + "Record", (Record,), {"global_name": name})


# ---------------------------------------------------------------------------------------------------------------------
# The table: every global a released snapshot names (and nothing else).

# Rebuilt by dnnlib.safe_pickle's stand-ins: tensors and parameters (the storage streams parsed there, location tags
# ignored), OrderedDict, numpy arrays and scalars (both numpy spellings).
SHARED_GLOBALS = [("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
                  ("torch.storage", "_load_from_bytes"), ("collections", "OrderedDict"), ("numpy", "ndarray"),
                  ("numpy", "dtype"), *[(f"{core}.multiarray", fn) for core in ("numpy.core", "numpy._core")
                                        for fn in ("_reconstruct", "scalar")]]

# Specific to the authors' snapshots: inert records and symbols.
AUTHORS_GLOBALS: dict[tuple[str, str], Any] = {
    PERSISTENT_GLOBAL: PersistentObject,
    ("torch.nn.modules.container", "ModuleList"): _record_class("torch.nn.modules.container.ModuleList"),
    ("collections", "defaultdict"): _defaultdict,
    ("builtins", "dict"): Symbol("builtins.dict"),
    ("builtins", "getattr"): _getattr_symbol,
    ("torch._C", "_VariableFunctionsClass"): Symbol("torch._C._VariableFunctionsClass"),
    ("functools", "partial"): PartialRecord,
    ("dnnlib.util", "EasyDict"): DictRecord,
    ("nerf.run_nerf", "run_network"): Symbol("nerf.run_nerf.run_network"),
    ("nerf.run_nerf_helpers", "_embed"): Symbol("nerf.run_nerf_helpers._embed"),
    ("nerf.run_nerf_helpers", "Embedder"): _record_class("nerf.run_nerf_helpers.Embedder"),
    ("nerf.run_nerf_helpers", "Embedder._embedding_fn"): Symbol("nerf.run_nerf_helpers.Embedder._embedding_fn"),
    ("nerf.run_nerf_helpers", "Embedder._identity"): Symbol("nerf.run_nerf_helpers.Embedder._identity"),
    ("omegaconf.dictconfig", "DictConfig"): _record_class("omegaconf.dictconfig.DictConfig"),
    ("omegaconf.base", "ContainerMetadata"): _record_class("omegaconf.base.ContainerMetadata"),
    ("omegaconf.base", "Metadata"): _record_class("omegaconf.base.Metadata"),
    ("omegaconf.nodes", "AnyNode"): _record_class("omegaconf.nodes.AnyNode"),
    ("typing", "Any"): Symbol("typing.Any"),
}

_SHARED = safe_pickle.allow(safe_pickle.TENSOR_GLOBALS, safe_pickle.NUMPY_GLOBALS)
GLOBALS = safe_pickle.allow({key: _SHARED[key] for key in SHARED_GLOBALS}, AUTHORS_GLOBALS)
"""Every global the authors' snapshots name, and nothing else (exact (module, name) pairs)."""


def read_records(path: str | os.PathLike) -> dict:
    """The file's top-level dict with records in place of objects. Raises AuthorsSnapshotError / OSError / EOFError."""
    with open(path, "rb") as f:
        data = safe_pickle.SafeUnpickler(f, GLOBALS).load()
        if f.read(1):
            raise AuthorsSnapshotError("the file continues after the end of its pickle")
    if not isinstance(data, dict):
        raise AuthorsSnapshotError(f"the file holds a {type(data).__name__}, not a dict of networks")
    return data


def is_authors_snapshot(path: str | os.PathLike, max_ops: int = 100_000) -> bool:
    """Whether the file is a pickle whose first global is the authors' persistent-object reconstructor (decided from
    the content, scanning opcodes up to that first global; nothing is unpickled)."""
    try:
        with open(path, "rb") as f:
            if f.read(1) != b"\x80":
                return False
            f.seek(0)
            strings: list[str] = []
            for n, (op, arg, _) in enumerate(pickletools.genops(f)):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                    strings = [*strings[-1:], arg]
                elif op.name == "STACK_GLOBAL":
                    return tuple(strings[-2:]) == PERSISTENT_GLOBAL
                elif op.name == "GLOBAL":
                    return tuple(arg.split(" ", 1)) == PERSISTENT_GLOBAL
                elif op.name in ("INST", "OBJ", "STOP") or n >= max_ops:
                    return False
    except (OSError, ValueError, EOFError, pickle.UnpicklingError):   # unreadable, or not a pickle
        return False
    return False


# ---------------------------------------------------------------------------------------------------------------------
# Records -> our networks.

def module_dict(obj: Any, where: str) -> dict:
    """The instance `__dict__` of a module record (a persistent object or a plain torch ModuleList)."""
    if isinstance(obj, PersistentObject):
        return obj.state
    if isinstance(obj, Record) and obj.global_name == "torch.nn.modules.container.ModuleList" \
            and isinstance(obj.state, dict):
        return obj.state
    raise AuthorsSnapshotError(f"'{where}' is not a network module")


def state_dict(obj: Any, where: str, prefix: str = "", out: dict | None = None) -> dict[str, torch.Tensor]:
    """The module's state dict (parameters, persistent buffers, then children), as torch would assemble it."""
    out = {} if out is None else out
    state = module_dict(obj, where + prefix)
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        entries = state.get(group, {})
        if not isinstance(entries, dict):
            raise AuthorsSnapshotError(f"'{where}{prefix}' has no {group} table")
        for name, value in entries.items():
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(name, str) or not isinstance(value, torch.Tensor):
                raise AuthorsSnapshotError(f"'{where}{prefix}{name}' is not a tensor")
            out[prefix + name] = value.detach()
    children = state.get("_modules", {})
    if not isinstance(children, dict):
        raise AuthorsSnapshotError(f"'{where}{prefix}' has no _modules table")
    for name, child in children.items():
        if child is not None:
            state_dict(child, where, f"{prefix}{name}.", out)
    return out


def init_kwargs(obj: PersistentObject, where: str) -> dict:
    kwargs = obj.state.get("_init_kwargs")
    if not isinstance(kwargs, dict):
        raise AuthorsSnapshotError(f"'{where}' records no constructor arguments")
    return kwargs


def _child(obj: PersistentObject, name: str, where: str) -> Any:
    children = obj.state.get("_modules")
    if not isinstance(children, dict) or name not in children:
        raise AuthorsSnapshotError(f"'{where}' has no child module '{name}'")
    return children[name]


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise AuthorsSnapshotError(what)


def _number(d: dict, key: str, where: str, kind: type = float) -> Any:
    value = d.get(key)
    ok = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    _need(ok and not isinstance(value, bool), f"'{where}' has no numeric '{key}' (got {value!r})")
    return kind(value)


def generator_kwargs(G: PersistentObject, where: str) -> dict:
    """Our Generator's constructor arguments from the authors' NeRFGenerator record (its init kwargs and `cfg`)."""
    _need(G.class_name == "NeRFGenerator", f"'{where}' is a {G.class_name}, not the authors' NeRFGenerator")
    kw = init_kwargs(G, where)
    cfg = kw.get("cfg")
    _need(isinstance(cfg, dict), f"'{where}' records no generator configuration (cfg)")
    fmm = cfg.get("fmm") or {}
    _need(isinstance(fmm, dict) and fmm.get("enabled", True) is True and fmm.get("activation", "demod") == "demod",
          f"'{where}' uses fmm={fmm!r}; only the factorised modulation with 'demod' row normalisation (every released "
          f"configuration) is implemented")
    _need(int(cfg.get("n_importance", 0) or 0) == 0, f"'{where}' uses hierarchical sampling (n_importance > 0), "
          f"which the released configurations do not and this renderer does not implement")
    _need(cfg.get("white_bkgd", True) is True, f"'{where}' renders on a black background (white_bkgd false); this "
          f"renderer composites on white, as every released configuration does")
    _need(kw.get("c_dim", 0) == 0 and kw.get("img_channels", 3) == 3,
          f"'{where}' is conditional or not RGB (c_dim {kw.get('c_dim')}, img_channels {kw.get('img_channels')})")
    mapping = kw.get("mapping_kwargs") or {}
    _need(isinstance(mapping, dict), f"'{where}' has malformed mapping_kwargs")
    synthesis = _child(G, "synthesis", where)
    _need(isinstance(synthesis, PersistentObject), f"'{where}.synthesis' is not a network module")
    fov = synthesis.state.get("fov", None)
    theta_std = cfg.get("theta_std")
    use_normal = cfg.get("use_normal") is True
    return dict(
        z_dim=_number(kw, "z_dim", where, int), w_dim=_number(kw, "w_dim", where, int),
        mapping_layers=int(mapping.get("num_layers", 2)), num_layers=_number(cfg, "num_layers", where, int),
        width=_number(cfg, "width", where, int), rank=int(fmm.get("rank", 10)), multires=10,
        img_resolution=_number(kw, "img_resolution", where, int), num_samples=_number(cfg, "n_samples", where, int),
        render_size=_number(cfg, "render_size", where), radius=4.0,
        fov_x_rad=float(fov) if isinstance(fov, (int, float)) and not isinstance(fov, bool) else 0.6911112070083618,
        azim_range_deg=[_number(cfg, "theta_low", where), _number(cfg, "theta_high", where)],
        elev_range_deg=[0.0 - _number(cfg, "phi_high", where), 0.0 - _number(cfg, "phi_low", where)],
        azim_std_deg=float(theta_std) if use_normal and isinstance(theta_std, (int, float)) else None,
        perturb=_number(cfg, "perturb", where), raw_noise_std=_number(cfg, "raw_noise_std", where),
        pixel_center=0.0)


def generator_state(theirs: dict[str, torch.Tensor], num_layers: int, where: str) -> dict[str, torch.Tensor]:
    """Their NeRFGenerator state dict under our Generator's names (shapes identical; no gains folded in)."""
    out = {}
    for key, value in theirs.items():
        if m := re.fullmatch(r"mapping\.fc(\d+)\.(weight|bias)", key):
            out[f"mapping_network.layers.{m[1]}.{m[2]}"] = value
        elif m := re.fullmatch(r"synthesis\.pts_linears\.(\d+)\.(.+)", key):
            out[f"nerf.layers.{m[1]}.{m[2]}"] = value
        elif m := re.fullmatch(r"synthesis\.output_linear\.(.+)", key):
            out[f"nerf.layers.{num_layers}.{m[1]}"] = value
        else:
            raise AuthorsSnapshotError(f"'{where}' holds the tensor '{key}', which the authors' NeRFGenerator does "
                                       f"not have")
    return out


def _check_state(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str,
                 ours_only: tuple[str, ...] = ()) -> None:
    """Every tensor our module needs is present with its shape (float); nothing extra."""
    expected = {k: v for k, v in module.state_dict().items() if k not in ours_only}
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    _need(not missing and not extra, f"'{where}' does not fit its configuration: missing {missing[:4]}, unexpected "
          f"{extra[:4]}")
    for key, ref in expected.items():
        got = state[key]
        _need(tuple(got.shape) == tuple(ref.shape), f"'{where}': tensor '{key}' has shape {list(got.shape)}, but "
              f"its configuration needs {list(ref.shape)}")
        _need(got.is_floating_point(), f"'{where}': tensor '{key}' is {got.dtype}, not floating point")
        _need(bool(torch.isfinite(got).all()), f"'{where}': tensor '{key}' holds NaN or infinite values")


def _check_gains(G_rec: PersistentObject, G: torch.nn.Module, where: str) -> None:
    """Their FullyConnectedLayers' stored gains equal ours (other gains would compute another function)."""
    mapping = _child(G_rec, "mapping", where)
    pairs = [(f"mapping.fc{i}", _child(mapping, f"fc{i}", where), layer)
             for i, layer in enumerate(G.mapping_network.layers)] if isinstance(mapping, PersistentObject) else []
    linears = module_dict(_child(_child(G_rec, "synthesis", where), "pts_linears", where), where)["_modules"]
    heads = [*linears.values(), _child(_child(G_rec, "synthesis", where), "output_linear", where)]
    pairs += [(f"synthesis layer {j} affine", _child(rec, "affine", where), layer.affine)
              for j, (rec, layer) in enumerate(zip(heads, G.nerf.layers))]
    for name, rec, ours in pairs:
        if not isinstance(rec, PersistentObject):
            continue
        for attr in ("weight_gain", "bias_gain"):
            value = rec.state.get(attr)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                _need(math.isclose(float(value), float(getattr(ours, attr)), rel_tol=1e-9),
                      f"'{where}': {name} has {attr} {value}, but this layer computes with {getattr(ours, attr)}")


@torch.no_grad()
def estimate_w_avg(G: torch.nn.Module, num: int = W_AVG_SAMPLES, seed: int = W_AVG_SEED,
                   batch: int = 10_000) -> torch.Tensor:
    """Mean of w = mapping(z) over `num` latents z ~ N(0, I) drawn with `seed` (accumulated in float64). [w_dim]"""
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros([G.w_dim], dtype=torch.float64)
    for start in range(0, num, batch):
        z = torch.randn([min(batch, num - start), G.z_dim], generator=gen)
        total += G.mapping_network(z.to(G.mapping_network.w_avg.device)).double().sum(dim=0).cpu()
    return (total / num).float()


def build_generator(rec: Any, where: str) -> torch.nn.Module:
    """Our Generator from the authors' NeRFGenerator record, with w_avg estimated."""
    from training.networks.generator import Generator
    _need(isinstance(rec, PersistentObject), f"'{where}' is not a network module")
    kwargs = generator_kwargs(rec, where)
    try:
        G = Generator(**kwargs)
    except (UserError, ValueError, TypeError) as exc:
        raise AuthorsSnapshotError(f"'{where}' has a configuration this Generator cannot take ({exc})") from None
    state = generator_state(state_dict(rec, where), kwargs["num_layers"], where)
    _check_state(G, state, where, ours_only=("mapping_network.w_avg",))
    _check_gains(rec, G, where)
    G.load_state_dict({**state, "mapping_network.w_avg": G.mapping_network.w_avg}, strict=True)
    G.mapping_network.w_avg.copy_(estimate_w_avg(G))
    return G.eval().requires_grad_(False)


def discriminator_kwargs(D: PersistentObject, state: dict[str, torch.Tensor], where: str) -> dict:
    _need(D.class_name == "Discriminator", f"'{where}' is a {D.class_name}, not the authors' Discriminator")
    kw = init_kwargs(D, where)
    _need(kw.get("c_dim", 0) == 0, f"'{where}' is a conditional discriminator (c_dim {kw.get('c_dim')})")
    patch = kw.get("patch_size") or D.state.get("img_resolution") or kw.get("img_resolution")
    epilogue = kw.get("epilogue_kwargs") or {}
    _need(isinstance(epilogue, dict), f"'{where}' has malformed epilogue_kwargs")
    channel_base, channel_max = int(kw.get("channel_base", 32768)), int(kw.get("channel_max", 512))
    in4 = state.get("b4.conv.weight")
    mbstd_channels = int(epilogue.get("mbstd_num_channels", 1))
    if in4 is not None and in4.ndim == 4:
        mbstd_channels = int(in4.shape[1] - min(channel_base // 4, channel_max))
    clamp = kw.get("conv_clamp", 256)
    return dict(img_resolution=int(patch), img_channels=int(kw.get("img_channels", 3)), channel_base=channel_base,
                channel_max=channel_max, num_fp16_res=int(kw.get("num_fp16_res", 4)),
                conv_clamp=None if clamp is None else float(clamp),
                mbstd_group_size=int(epilogue.get("mbstd_group_size", 4)), mbstd_num_channels=mbstd_channels)


def build_discriminator(rec: Any, where: str) -> torch.nn.Module:
    """Our Discriminator from the authors' one (same tensor names; their FIR filter buffers are dropped)."""
    from training.networks.discriminator import Discriminator
    _need(isinstance(rec, PersistentObject), f"'{where}' is not a network module")
    state = {k: v for k, v in state_dict(rec, where).items() if not k.endswith("resample_filter")}
    kwargs = discriminator_kwargs(rec, state, where)
    try:
        D = Discriminator(**kwargs)
    except (UserError, ValueError, TypeError) as exc:
        raise AuthorsSnapshotError(f"'{where}' has a configuration this Discriminator cannot take ({exc})") from None
    _check_state(D, state, where)
    D.load_state_dict(state, strict=True)
    return D.eval().requires_grad_(False)


def build_augment_pipe(rec: Any, patch_size: int) -> torch.nn.Module | None:
    """Our 'fixed' pipe (crop + x-flip at their p) when theirs is that one; None for any other pipe."""
    from training.augment import AugmentPipe
    if not isinstance(rec, PersistentObject) or rec.class_name != "AugmentPipe":
        return None
    kw = rec.state.get("_init_kwargs")
    if not isinstance(kw, dict) or not set(kw) <= {"crop", "xflip"}:
        return None
    p = rec.state.get("_buffers", {}).get("p")
    p = float(p.reshape(-1)[0]) if isinstance(p, torch.Tensor) and p.numel() == 1 else 0.5
    return AugmentPipe(mode="fixed", patch_size=patch_size, xflip=float(kw.get("xflip", 1.0)),
                       p=min(max(p, 0.0), 1.0)).eval().requires_grad_(False)


def network_config(G: torch.nn.Module, D: torch.nn.Module | None, training_set_kwargs: dict) -> dict:
    """The TrainConfig keys that describe these networks (the base of a fine-tuning run's config)."""
    kw = G.init_kwargs
    cfg = {k: kw[k] for k in ("z_dim", "w_dim", "mapping_layers", "num_layers", "width", "rank", "multires",
                              "num_samples", "render_size", "radius", "fov_x_rad", "perturb", "raw_noise_std",
                              "pixel_center")}
    cfg.update(azim_range_deg=list(kw["azim_range_deg"]), elev_range_deg=list(kw["elev_range_deg"]),
               azim_std_deg=float(kw["azim_std_deg"] or 0.0))
    if D is not None:
        d = D.init_kwargs
        cfg.update(patch_size=d["img_resolution"], d_channel_base=d["channel_base"], d_channel_max=d["channel_max"],
                   d_num_fp16_res=d["num_fp16_res"], mbstd_group=d["mbstd_group_size"],
                   mbstd_channels=d["mbstd_num_channels"])
        if d["conv_clamp"] is not None:
            cfg["d_conv_clamp"] = int(d["conv_clamp"])
    if isinstance(training_set_kwargs.get("xflip"), bool):
        cfg["mirror"] = training_set_kwargs["xflip"]
    return cfg


def _plain(value: Any) -> Any:
    """JSON-safe copy of plain data (records become their names)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def snapshot_kimg(path: str | os.PathLike) -> float:
    """The kimg in a `network-snapshot-NNNNNN.pkl` file name (their files record it nowhere else), else 0."""
    m = re.search(r"network-snapshot-(\d+)\.pkl$", os.fspath(path))
    return float(m[1]) if m else 0.0


def load_authors_snapshot(path: str | os.PathLike, device: torch.device | str = "cpu") -> EasyDict:
    """An authors' snapshot as our networks: EasyDict(G, G_ema, D, augment_pipe, training_set_kwargs, config, kimg,
    origin), like training.checkpoint.load_network_snapshot. G and D are None where the file has none (a G_ema-only
    file); G_ema is G where the file has only G. Raises UserError with a clear message on any problem."""
    path = os.fspath(path)
    try:
        data = read_records(path)
        nets = {}
        for key in ("G", "G_ema"):
            nets[key] = build_generator(data[key], key) if data.get(key) is not None else None
        _need(nets["G"] is not None or nets["G_ema"] is not None, "the file holds neither G_ema nor G")
        nets["D"] = build_discriminator(data["D"], "D") if data.get("D") is not None else None
    except safe_pickle.ForbiddenGlobalError as exc:
        raise UserError(f"Refusing to load '{path}' as one of the authors' HyperNeRFGAN snapshots: the file names "
                        f"the global '{exc.module}.{exc.name}', which is not one of the globals those snapshots use. "
                        f"Nothing from the file was executed.") from None
    except (AuthorsSnapshotError, pickle.UnpicklingError) as exc:
        raise UserError(f"Cannot load '{path}' as one of the authors' HyperNeRFGAN snapshots: {exc}. Nothing from "
                        f"the file was executed.") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError,
            RecursionError) as exc:
        raise UserError(f"Cannot read '{path}' as one of the authors' HyperNeRFGAN snapshots: the file is truncated "
                        f"or corrupt ({type(exc).__name__}: {exc}). Nothing from the file was executed.") from None
    G_ema = nets["G_ema"] if nets["G_ema"] is not None else nets["G"]
    if nets["D"] is not None:
        patch = nets["D"].img_resolution
    else:
        cfg = init_kwargs(data["G_ema"] if nets["G_ema"] is not None else data["G"], "G_ema").get("cfg") or {}
        patch = cfg.get("patch_size") if isinstance(cfg.get("patch_size"), int) else None
    set_kwargs = _plain(data.get("training_set_kwargs") or {})
    config = network_config(G_ema, nets["D"], set_kwargs)
    if patch is not None:
        config["patch_size"] = int(patch)
    out = EasyDict(G=nets["G"], G_ema=G_ema, D=nets["D"],
                   augment_pipe=build_augment_pipe(data.get("augment_pipe"), int(patch)) if patch else None,
                   training_set_kwargs=set_kwargs, config=config, kimg=snapshot_kimg(path),
                   origin=dict(format=AUTHORS_FORMAT, path=os.path.abspath(path),
                               w_avg=f"estimated: mean of w over {W_AVG_SAMPLES:,} z drawn with seed {W_AVG_SEED}"))
    for key in ("G", "G_ema", "D", "augment_pipe"):
        if out[key] is not None:
            out[key] = out[key].to(device)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Weight tables (for tests and tools): our names -> theirs.

def authors_generator_state(G: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our Generator's tensors under the authors' NeRFGenerator names (the inverse of `generator_state`; no w_avg)."""
    L = G.num_layers
    rename: list[tuple[str, Callable[[re.Match], str]]] = [
        (r"mapping_network\.layers\.(\d+)\.(.+)", lambda m: f"mapping.fc{m[1]}.{m[2]}"),
        (r"nerf\.layers\.(\d+)\.(.+)",
         lambda m: f"synthesis.output_linear.{m[2]}" if int(m[1]) == L else f"synthesis.pts_linears.{m[1]}.{m[2]}")]
    out = {}
    for key, value in G.state_dict().items():
        for pattern, fn in rename:
            if m := re.fullmatch(pattern, key):
                out[fn(m)] = value
                break
    return out
