"""The training configuration: one typed, flat dataclass (`TrainConfig`), TOML presets in `configs/`, composition.

Precedence (later wins): dataclass defaults < presets in the order of `--cfg a,b,c` < `--set key=value` < explicit
CLI flags. `TrainConfig.to_dict()` is the complete, JSON-serialisable truth of a run (`training_options.json`).
Networks never see this object: `G_kwargs()`, `D_kwargs()` and `augment_kwargs()` turn it into primitive kwargs.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dnnlib.util import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
RECIPE_DIR = CONFIG_DIR / "recipes"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
IMPLS = ("auto", "reference")   # torch_utils/backend.py: the fast path where it runs | plain eager PyTorch
AUG_MODES = ("fixed", "ada", "noaug")
SYNTH_FAMILIES = ("cars", "planes", "chairs", "carla")


@dataclass
class TrainConfig:
    """Every knob of a training run. Units are in the names (kimg, ticks, deg, rad)."""

    # Data.
    data: str = ""                       # dataset zip/folder, or 'synth:FAMILY[:RES[:COUNT[:SEED]]]'
    synth_resolution: int = 128          # resolution of a 'synth:' set when the spec does not give one
    synth_count: int = 10000             # number of images of a 'synth:' set when the spec does not give one
    mirror: bool = True                  # dataset x-flips (doubles the index), as the reference's --mirror=1
    # Length, batch, hardware.
    kimg: float = 25000.0                # total training length in thousands of real images shown to D
    batch: int = 4                       # total batch over all GPUs
    gpus: int = 1                        # number of processes (torchrun --nproc_per_node must match)
    seed: int = 0                        # global seed: weights, data order, z, poses, windows, augmentation
    workers: int = 3                     # DataLoader worker processes
    deterministic: bool = False          # torch.use_deterministic_algorithms + workers 0
    precision: str = "auto"              # auto | fp32 | fp16 | bf16 (auto: fp16 on CUDA sm_75+, fp32 on CPU)
    impl: str = "auto"                   # auto (the fast path where it runs) | reference (plain eager PyTorch): how
                                         # every op is computed (torch_utils/backend.py); the same function either way
    # Generator (training/networks/generator.py).
    z_dim: int = 128
    w_dim: int = 128
    mapping_layers: int = 2
    num_layers: int = 4                  # NeRF MLP layers (4 or 8; a skip after layer 4 when >= 6)
    width: int = 128                     # NeRF MLP width
    rank: int = 10                       # FMM rank
    multires: int = 10                   # positional-encoding frequencies
    num_samples: int = 32                # stratified samples per ray
    render_size: float = 2.0             # near/far = radius -/+ render_size / 2
    radius: float = 4.0                  # camera distance from the origin
    fov_x_rad: float = 0.6911112070083618
    azim_range_deg: list = field(default_factory=lambda: [-180.0, 180.0])
    elev_range_deg: list = field(default_factory=lambda: [0.0, 90.0])
    azim_std_deg: float = 0.0            # > 0: normal azimuth prior with this std instead of uniform
    perturb: float = 1.0                 # stratified jitter for training fakes
    raw_noise_std: float = 1.0           # density noise for training fakes
    pixel_center: float = 0.5            # 0.5 = pixel centres (ours); 0.0 = integer coordinates (reference)
    patch_size: int = 32                 # P: D resolution; G renders one P x P window per object
    patch_max_spacing: float = 1.0       # 1 = full-resolution windows (reference); > 1: random-scale windows, ray
                                         # spacing ~ U[1, this] pixels (up to ~res/P = the whole image), reals alike
    # Discriminator (training/networks/discriminator.py).
    d_channel_base: int = 32768
    d_channel_max: int = 512
    d_num_fp16_res: int = 4
    d_conv_clamp: int = 256
    mbstd_group: int = 4
    mbstd_channels: int = 1
    # Augmentation (training/augment.py).
    aug: str = "fixed"                   # fixed (crop + x-flip at p) | ada (adaptive p) | noaug (crop only, p = 0)
    p: float | None = None               # augmentation probability; None = 0.5 for fixed, 0 for ada (initial value)
    ada_target: float = 0.6              # target of E[sign(D(real))]
    ada_kimg: float = 500.0              # ADA adjustment speed: p can move 0 -> 1 in this many kimg
    ada_interval: int = 4                # steps between ADA updates
    # Loss and optimisation.
    r1_gamma: float = 1.0
    d_reg_interval: int = 16             # lazy R1 every this many D steps (loss multiplied by it)
    g_reg_interval: int = 4              # only rescales G lr/beta2 (there is no G regulariser; the phase is dropped)
    g_lr: float = 0.0025
    d_lr: float = 0.0025
    beta1: float = 0.0
    beta2: float = 0.99
    eps: float = 1e-8
    ema_kimg: float = 20.0               # EMA half-life
    ema_rampup: float = 0.05             # EMA half-life ramps up as ema_rampup * cur_nimg (0 = off)
    max_bad_steps: int = 100             # abort after this many consecutive steps with non-finite gradients
    max_frozen_ticks: int = 2            # abort after this many consecutive ticks in which G did not change (0: never)
    # Logging, snapshots, metrics.
    kimg_per_tick: float = 4.0
    snap: int = 50                       # network snapshot + training state every this many ticks (0 = only at end)
    image_snap: int = 50                 # image grid every this many ticks (0 = only at start and end)
    grid_w: int = 8                      # image grid columns (fixed seeds and fixed poses)
    grid_h: int = 4                      # image grid rows
    grid_seed: int = 0
    ray_chunk: int = 65536               # rays per chunk for full-resolution renders
    metrics: list = field(default_factory=list)
    metrics_detector: str = ""           # feature detector file of the snapshot metrics ("" = the official Inception)
    # Whole-object training (opt-in; training/patch_scale.py, configs/recipes/). The defaults are the reference.
    patch_scale: str = "fixed"           # the scale of D's patches: fixed (full-resolution crops, the reference) or
                                         # LAW:START[:END[:KIMG]], LAW uniform (parameter: the lower bound of the
                                         # scale) or beta (b of Beta(1, b)), the parameter moving linearly from START
                                         # to END over the first KIMG kimg (END = START, KIMG = 0 when left out)
    d_patch_cond: bool = False           # scale-aware D: conditioned on each patch's scale and position

    def __post_init__(self) -> None:
        if self.p is None:
            self.p = 0.5 if self.aug == "fixed" else 0.0
        _coerce_types(self)
        self._validate()

    def _validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise UserError(msg)
        need(self.precision in PRECISIONS, f"precision '{self.precision}' is not one of {', '.join(PRECISIONS)}.")
        need(self.aug in AUG_MODES, f"aug '{self.aug}' is not one of {', '.join(AUG_MODES)}.")
        need(self.impl in IMPLS, f"impl '{self.impl}' is not one of {', '.join(IMPLS)} (auto = the fast path where "
             f"it runs; reference = plain eager PyTorch).")
        for name in ("batch", "gpus", "patch_size", "num_samples", "num_layers", "width", "synth_resolution",
                     "synth_count", "d_reg_interval", "g_reg_interval", "ada_interval", "grid_w", "grid_h",
                     "ray_chunk", "mbstd_group", "max_bad_steps", "z_dim", "w_dim", "rank"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1 (got {getattr(self, name)}).")
        for name in ("kimg", "kimg_per_tick", "g_lr", "d_lr", "eps", "ema_kimg", "ada_kimg"):
            need(getattr(self, name) > 0, f"{name} must be > 0 (got {getattr(self, name)}).")
        for name in ("seed", "workers", "snap", "image_snap", "max_frozen_ticks", "r1_gamma", "ema_rampup", "perturb",
                     "raw_noise_std"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0 (got {getattr(self, name)}).")
        need(0.0 <= self.p <= 1.0, f"p must be in [0, 1] (got {self.p}).")
        need(0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0, "beta1 and beta2 must be in [0, 1).")
        need(len(self.azim_range_deg) == 2 and len(self.elev_range_deg) == 2,
             "azim_range_deg and elev_range_deg must be two numbers [low, high].")
        need(self.batch % self.gpus == 0,
             f"batch {self.batch} is not divisible by gpus {self.gpus}: use a batch that is a multiple of {self.gpus}.")
        batch_gpu = self.batch // self.gpus
        group = min(self.mbstd_group, batch_gpu)
        need(batch_gpu % group == 0,
             f"the per-GPU batch {batch_gpu} is not divisible by the minibatch-stddev group {group}: use a batch that "
             f"is a multiple of {self.gpus * group}, or --set mbstd_group=1.")
        need(self.patch_max_spacing >= 1.0, f"patch_max_spacing must be >= 1 (1 = full-resolution windows, the "
             f"reference; got {self.patch_max_spacing}).")
        need(self.patch_size >= 4 and (self.patch_size & (self.patch_size - 1)) == 0,
             f"patch_size must be a power of two >= 4 (got {self.patch_size}).")
        self._validate_patch_scale(need)
        synth_res = self.synth_spec_resolution()
        if synth_res is not None:
            need(self.patch_size <= synth_res,
                 f"patch_size {self.patch_size} is larger than the data resolution {synth_res}: use --set "
                 f"patch_size={_pow2_floor(synth_res)} or a larger synth_resolution.")

    @property
    def patch_law(self) -> tuple[str, float, float, float]:
        """patch_scale as (law, start, end, anneal_kimg); ('fixed', 0, 0, 0) for the reference crops."""
        return parse_patch_scale(self.patch_scale)

    def _validate_patch_scale(self, need) -> None:
        try:
            law, start, end, kimg = self.patch_law
        except ValueError as exc:
            need(False, str(exc))
            return
        need(kimg >= 0, f"patch_scale's annealing length KIMG must be >= 0 (got {kimg:g}).")
        if law == "uniform":
            need(0.0 <= start <= 1.0 and 0.0 <= end <= 1.0, f"the uniform law's START and END in patch_scale are "
                 f"lower bounds of the scale (a fraction of the frame, 0 = the smallest patch) and must lie in "
                 f"[0, 1]; got {start:g} and {end:g}.")
        if law == "beta":
            need(start > 0 and end > 0, f"the beta law's START and END in patch_scale are b of Beta(1, b) and must "
                 f"be > 0 (0.001: almost always the whole frame; 1: uniform scales); got {start:g} and {end:g}.")
        need(self.patch_max_spacing == 1.0 or (law == "fixed" and not self.d_patch_cond),
             f"patch_max_spacing={self.patch_max_spacing:g} (random-scale windows) does not combine with "
             f"patch_scale={self.patch_scale} or d_patch_cond: use --set patch_scale=uniform:LOW instead "
             f"(the same kind of windows, as scales, with annealing).")

    def synth_spec_resolution(self) -> int | None:
        """Resolution a 'synth:' data spec will have, or None for a file dataset / no data."""
        if not self.data.startswith("synth:"):
            return None
        parts = self.data.split(":")
        if len(parts) >= 3 and parts[2]:
            try:
                return int(parts[2])
            except ValueError as exc:
                raise UserError(f"bad resolution '{parts[2]}' in data spec '{self.data}': use "
                                f"synth:FAMILY[:RES[:COUNT[:SEED]]] with integers.") from exc
        return self.synth_resolution

    @property
    def batch_gpu(self) -> int:
        return self.batch // self.gpus

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = drop_retired_keys(d, source="saved config")
        check_keys(d, source="saved config")
        return cls(**d)

    def G_kwargs(self, img_resolution: int) -> dict[str, Any]:
        """Primitive constructor kwargs of training.networks.generator.Generator."""
        return dict(z_dim=self.z_dim, w_dim=self.w_dim, mapping_layers=self.mapping_layers,
                    num_layers=self.num_layers, width=self.width, rank=self.rank, multires=self.multires,
                    img_resolution=int(img_resolution), num_samples=self.num_samples, render_size=self.render_size,
                    radius=self.radius, fov_x_rad=self.fov_x_rad, azim_range_deg=list(self.azim_range_deg),
                    elev_range_deg=list(self.elev_range_deg),
                    azim_std_deg=self.azim_std_deg if self.azim_std_deg > 0 else None,
                    perturb=self.perturb, raw_noise_std=self.raw_noise_std, pixel_center=self.pixel_center)

    def D_kwargs(self) -> dict[str, Any]:
        """Primitive constructor kwargs of training.networks.discriminator.Discriminator."""
        kwargs = dict(img_resolution=self.patch_size, img_channels=3, channel_base=self.d_channel_base,
                      channel_max=self.d_channel_max, num_fp16_res=self.d_num_fp16_res, conv_clamp=self.d_conv_clamp,
                      mbstd_group_size=self.mbstd_group, mbstd_num_channels=self.mbstd_channels)
        if self.d_patch_cond:
            kwargs["patch_features"] = 3     # scale, centre row, centre column (training.patch_scale)
        return kwargs

    def augment_kwargs(self) -> dict[str, Any]:
        """Constructor kwargs of training.augment.AugmentPipe (noaug = crop only, p = 0)."""
        p = 0.0 if self.aug == "noaug" else self.p
        return dict(mode=self.aug, patch_size=self.patch_size, p=p, max_spacing=self.patch_max_spacing)

    def desc(self, cfg_names: list[str]) -> str:
        """Short run-directory description, e.g. 'chairs-t4-synth_chairs-b4-fixed' (with '-rs4.096' for random-scale
        windows, which change what D sees and so belong in the name)."""
        data = self.data.replace("synth:", "synth_").split(":")[0]
        data = Path(data).stem if not data.startswith("synth_") else data
        rs = f"rs{self.patch_max_spacing:g}" if self.patch_max_spacing > 1 else ""
        law = "" if self.patch_law[0] == "fixed" else f"ps{self.patch_law[0]}"
        parts = [*cfg_names, data, f"b{self.batch}", self.aug, rs, law, "dcond" if self.d_patch_cond else ""]
        return "-".join(p for p in parts if p).replace("/", "_")


def parse_patch_scale(spec: str) -> tuple[str, float, float, float]:
    """'fixed' | 'LAW:START[:END[:KIMG]]' -> (law, start, end, anneal_kimg). Raises ValueError with a message for
    users. END defaults to START (no annealing), KIMG to 0 (the END value from the start)."""
    from training.patch_scale import LAWS as laws
    parts = [p.strip() for p in str(spec).split(":")]
    law = parts[0]
    if law not in laws:
        raise ValueError(f"patch_scale '{spec}': the law '{law}' is not one of {', '.join(laws)} (fixed = the "
                         f"reference's full-resolution crops; e.g. beta:0.001:0.8:200).")
    if law == "fixed":
        if len(parts) > 1:
            raise ValueError(f"patch_scale '{spec}': the fixed law takes no parameters.")
        return ("fixed", 0.0, 0.0, 0.0)
    if not 2 <= len(parts) <= 4:
        raise ValueError(f"patch_scale '{spec}' must read LAW:START[:END[:KIMG]], e.g. beta:0.001:0.8:200.")
    try:
        nums = [float(p) for p in parts[1:]]
    except ValueError:
        raise ValueError(f"patch_scale '{spec}': START, END and KIMG must be numbers.") from None
    start = nums[0]
    end = nums[1] if len(nums) > 1 else start
    kimg = nums[2] if len(nums) > 2 else 0.0
    return (law, start, end, kimg)


def _pow2_floor(n: int) -> int:
    return 1 << int(math.floor(math.log2(max(n, 1))))


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for f in fields(TrainConfig):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        out[f.name] = args[0] if len(args) == 1 else tp  # Optional[X] -> X (None is resolved in __post_init__)
    return out


# Keys of earlier versions that chose how to compute the same function; the backend (`impl`) chooses now. A saved
# config (training state, snapshot, training_options.json) that holds them still loads: they are dropped with one line.
RETIRED_KEYS = ("cuda_graphs", "data_on_gpu_gb", "d_channels_last", "d_compile", "r1_channels_last", "d_fir",
                "d_epilogue_split", "d_epilogue_split_rows", "r1_fir", "g_compile", "g_gemm_tuning", "g_train_mlp",
                "g_fakes_mlp", "ema_overlap", "d_step_overlap", "metrics_mlp", "r1_fp32", "loss_scale_init",
                "loss_scale_growth_interval")


def drop_retired_keys(d: dict[str, Any], source: str) -> dict[str, Any]:
    """d without RETIRED_KEYS, printing one line that names those it held."""
    retired = [k for k in d if k in RETIRED_KEYS]
    if not retired:
        return d
    print(f"Note: {source} holds config keys that no longer exist; ignored: {', '.join(retired)} (implementation "
          f"choices are the backend's now: impl=auto|reference).", flush=True)
    return {k: v for k, v in d.items() if k not in RETIRED_KEYS}


def check_keys(d: dict[str, Any], source: str) -> None:
    """Raise UserError naming unknown keys (with close matches) and listing the valid ones."""
    valid = field_names()
    unknown = [k for k in d if k not in valid]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, valid, n=1)
            hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise UserError(f"Unknown config key {', '.join(hints)} in {source}. Valid keys: {', '.join(valid)}.")


def _coerce_types(cfg: TrainConfig) -> None:
    """Check and convert every field to its declared type (ints may become floats, never the reverse)."""
    for name, tp in _field_types().items():
        value = getattr(cfg, name)
        if tp is bool:
            ok = isinstance(value, bool)
        elif tp is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif tp is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                value = float(value)
        elif tp is str:
            ok = isinstance(value, str)
        elif tp is list:
            ok = isinstance(value, (list, tuple))
            value = list(value) if ok else value
        else:
            ok = True
        if not ok:
            raise UserError(f"Config key '{name}' must be of type {tp.__name__}, got {value!r}.")
        object.__setattr__(cfg, name, value)


def list_presets() -> list[str]:
    """Preset names: configs/*.toml (the faithful presets and `smoke`) and configs/recipes/*.toml (departures)."""
    return sorted(p.stem for d in (CONFIG_DIR, RECIPE_DIR) for p in d.glob("*.toml"))


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def preset_path(name: str) -> Path:
    """configs/<name>.toml, else configs/recipes/<name>.toml (the path that does not exist when neither does)."""
    path = CONFIG_DIR / f"{name}.toml"
    return path if path.is_file() or not (RECIPE_DIR / f"{name}.toml").is_file() else RECIPE_DIR / f"{name}.toml"


def load_preset(name: str) -> dict[str, Any]:
    """Read configs/<name>.toml or configs/recipes/<name>.toml (flat key = value pairs)."""
    path = preset_path(name)
    if not path.is_file() or "/" in name or "\\" in name:
        raise UserError(f"Unknown preset '{name}'. Valid presets: {', '.join(list_presets())} "
                        f"(combine them with --cfg a,b; later ones win).")
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"Preset file {path} is not valid TOML: {exc}") from exc
    check_keys(values, source=f"preset {path.name}")
    return values


def parse_set(item: str) -> tuple[str, Any]:
    """Parse one '--set key=value' into (key, typed value) using the field's declared type."""
    if "=" not in item:
        raise UserError(f"--set '{item}' is not key=value (e.g. --set r1_gamma=0.5).")
    key, raw = (s.strip() for s in item.split("=", 1))
    check_keys({key: None}, source=f"--set {item}")
    tp = _field_types()[key]
    try:
        if tp is bool:
            low = raw.lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return key, low in ("1", "true", "yes", "on")
        if tp is int:
            return key, int(raw)
        if tp is float:
            return key, float(raw)
        if tp is list:
            items = [s.strip() for s in raw.strip("[]").split(",") if s.strip()]
            return key, [_number_or_str(s) for s in items]
        return key, raw
    except ValueError as exc:
        raise UserError(f"--set {key}={raw}: expected a value of type {tp.__name__}.") from exc


def _number_or_str(s: str) -> Any:
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    return s.strip("'\"")


def resolve_config(cfg: str | None = None, sets: list[str] | tuple[str, ...] = (),
                   overrides: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> TrainConfig:
    """Compose a config: `base` (defaults or a saved config) < presets of `cfg` ('a,b') < `sets` < `overrides`.

    `overrides` holds the explicit CLI flags; entries whose value is None are ignored.
    """
    values: dict[str, Any] = drop_retired_keys(dict(base or {}), source="the saved config")
    for name in [n.strip() for n in (cfg or "").split(",") if n.strip()]:
        values.update(load_preset(name))
    for item in sets:
        key, value = parse_set(item)
        values[key] = value
    for key, value in (overrides or {}).items():
        if value is not None:
            check_keys({key: value}, source="command-line flags")
            values[key] = value
    check_keys(values, source="the composed config")
    return TrainConfig(**values)
