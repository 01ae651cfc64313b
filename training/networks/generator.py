"""The HyperNeRFGAN generator: mapping z -> w, hypernetwork NeRF weights, batched volume rendering of all objects.

Contract: docs/ARCHITECTURE.md (Generator). `forward` keeps no state: poses, windows and noise are arguments or come
from the explicit torch.Generator. Random draws in forward, in order: poses (if c2w is None), windows (if patch_size
is given and window is None), then the renderer's stratified offsets and density noise (perturb=True only).
"""
from __future__ import annotations

import torch
from torch import nn

from dnnlib.util import UserError
from torch_utils import backend
from torch_utils.ops import fused_mlp as fm
from torch_utils.persistence import persistent_class
from training.networks.mapping import MappingNetwork
from training.networks.nerf import NeRFMLP
from training.rendering import camera
from training.rendering.renderer import FieldFn, Randomness, draw_randomness, render_image
from training.rendering.volume import density_activation

Output = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]

@persistent_class
class Generator(nn.Module):
    """z [B, z_dim] (+ camera) -> image [B, 3, h, w] in [-1, 1] (white = +1)."""

    # Rays per field call of a full-image render when the caller passes ray_chunk=None (over all objects of the
    # batch). Bounds inference memory: 32768 rays x 32 samples keep each fp32 activation of the MLP under 0.8 GB, so
    # metrics at batch 16-64 fit a 16 GB T4 (unchunked, a batch of 16 128 x 128 renders needed 23-27 GB on the H100).
    # Windows (training patches) are never chunked by default: they are small and the compiled step wants one call.
    DEFAULT_RAY_CHUNK = 32768

    def __init__(self,
                 z_dim: int = 128,                        # Latent size.
                 w_dim: int = 128,                        # Size of w (one per object).
                 mapping_layers: int = 2,                 # FC layers of the mapping network.
                 num_layers: int = 4,                     # NeRF hidden layers (4: CARLA/planes, 8: cars/chairs).
                 width: int = 128,                        # NeRF hidden width.
                 rank: int = 10,                          # FMM rank.
                 multires: int = 10,                      # Positional-encoding frequencies.
                 img_resolution: int = 128,               # Full image resolution H = W.
                 num_samples: int = 32,                   # Samples per ray.
                 render_size: float = 2.0,                # Depth range: near/far = radius -/+ render_size / 2.
                 radius: float = camera.RADIUS,           # Camera distance from the origin.
                 fov_x_rad: float = camera.FOV_X_RAD,     # Horizontal field of view.
                 azim_range_deg: tuple[float, float] | list[float] = (-180.0, 180.0),  # Uniform azimuth range.
                 elev_range_deg: tuple[float, float] | list[float] = (0.0, 90.0),      # Elevation range, sin-uniform.
                 azim_std_deg: float | None = None,       # If set: azimuth ~ N(0, std^2) instead of uniform.
                 perturb: float = 1.0,                    # > 0: stratified jitter when called with perturb=True.
                 raw_noise_std: float = 1.0,              # Density-noise std when called with perturb=True.
                 pixel_center: float = camera.DEFAULT_PIXEL_CENTER,  # 0.5 = pixel centres; 0.0 = reference.
                 w_avg_beta: float = 0.995,               # EMA decay of the tracked w_avg (truncation).
                 ) -> None:
        super().__init__()
        if num_samples < 2:
            raise UserError(f"num_samples must be at least 2 (got {num_samples}); set e.g. num_samples=32.")
        if render_size <= 0 or render_size / 2 >= radius:
            raise UserError(f"render_size={render_size} must be positive and smaller than 2 * radius ({radius}).")
        self.z_dim, self.w_dim, self.num_layers, self.width = z_dim, w_dim, num_layers, width
        self.img_resolution, self.num_samples = img_resolution, num_samples
        self.radius, self.fov_x_rad, self.pixel_center = float(radius), float(fov_x_rad), float(pixel_center)
        self.near, self.far = self.radius - render_size / 2, self.radius + render_size / 2
        self.perturb, self.raw_noise_std = float(perturb), float(raw_noise_std)
        self.pose_prior = dict(azim_range_deg=tuple(azim_range_deg), elev_range_deg=tuple(elev_range_deg),
                               azim_std_deg=azim_std_deg)
        self.mapping_network = MappingNetwork(z_dim, w_dim, mapping_layers, lr_multiplier=0.01, w_avg_beta=w_avg_beta)
        self.nerf = NeRFMLP(num_layers, width, w_dim, rank, multires)

    def _device(self, generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
        if device is not None:
            return torch.device(device)
        if generator is not None:
            return generator.device
        return self.nerf.layers[0].weight.device

    def mapping(self, z: torch.Tensor, psi: float = 1.0, update_w_avg: bool = False) -> torch.Tensor:
        """z [B, z_dim] -> w [B, w_dim]."""
        return self.mapping_network(z, psi=psi, update_w_avg=update_w_avg)

    def sample_z(self, n: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
        """z ~ N(0, I): [n, z_dim] float32."""
        return torch.randn([n, self.z_dim], generator=generator, device=self._device(generator, device))

    def sample_poses(self, n: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
        """Camera-to-world matrices [n, 4, 4] from the pose prior."""
        return camera.sample_poses(n, generator=generator, device=self._device(generator, device),
                                   radius=self.radius, **self.pose_prior)

    def sample_windows(self, n: int, patch_size: int, generator: torch.Generator | None = None,
                       device: torch.device | str | None = None, max_spacing: float = 1.0) -> torch.Tensor:
        """Random P x P windows: starts [n, 2] int64 (row0, col0), every valid offset possible; with max_spacing > 1
        random-scale windows [n, 3] float (row0, col0, spacing), see camera.sample_windows."""
        self._check_patch(patch_size)
        return camera.sample_windows(n, self.img_resolution, patch_size, generator=generator,
                                     device=self._device(generator, device), max_spacing=max_spacing)

    def sample_randomness(self, n: int, patch_size: int | None = None, generator: torch.Generator | None = None,
                          device: torch.device | str | None = None) -> Randomness:
        """The renderer's draws of a perturbed render (perturb=True) of n P x P windows (or full images when P is
        None), drawn now in the order the renderer would draw them: pass the result to forward / synthesis as
        `randomness` to render exactly what a call with `generator` would, with no generator inside the call."""
        self._check_patch(patch_size)
        side = self.img_resolution if patch_size is None else patch_size
        return draw_randomness(n, side * side, self.num_samples, perturb=self.perturb > 0,
                               raw_noise_std=self.raw_noise_std, generator=generator,
                               device=self._device(generator, device))

    def _check_patch(self, patch_size: int | None) -> None:
        if patch_size is not None and not 1 <= patch_size <= self.img_resolution:
            raise UserError(f"patch_size={patch_size} must lie in 1..img_resolution ({self.img_resolution}).")

    @torch.compiler.disable   # a host-side decision: never traced
    def render_mlp(self, device: torch.device | str | None = None) -> str:
        """The NeRF MLP path, 'fused' or 'torch', that a no-grad render on `device` (default: G's) takes with
        mlp=None: the backend's `render_mlp` there, where the fused kernel supports this MLP's shape."""
        device = self._device(None, device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        choice = backend.current()
        if choice.render_mlp != "fused" or torch.device(choice.device) != device or not fm.supported(self.nerf):
            return "torch"
        return "fused"

    def _fused_evaluator(self, weights: list):
        """The fused Triton MLP (fp16) for these weights (forward only)."""
        cfg = fm.mlp_config(self.nerf)
        # Both calls stay eager inside a torch.compile'd render (training's no-grad fakes): Dynamo runs them as they
        # are instead of tracing the kernel launch; a CUDA graph records the launch like any other.
        packed = torch.compiler.disable(fm.pack_weights)(weights, dtype=torch.float16, **cfg)   # once per render
        evaluate = torch.compiler.disable(fm.fused_evaluate)
        return lambda pts: evaluate(packed, pts, dtype=torch.float16, **cfg)

    def _field(self, w: torch.Tensor, fused: bool = False) -> FieldFn:
        """Build the per-object NeRF weights once; return field(pts [B, N, 3]) -> (rgb [B, N, 3], raw_sigma [B, N]).

        fused: evaluate the MLP with the fused kernel (no-grad renders only)."""
        weights = self.nerf.build_weights(w)
        fused_fn = self._fused_evaluator(weights) if fused else None

        def field(pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            raw = fused_fn(pts) if fused_fn is not None else self.nerf.evaluate(weights, pts)   # [B, N, 4]
            raw = raw.to(torch.promote_types(raw.dtype, torch.float32))
            return torch.sigmoid(raw[..., :3]), raw[..., 3]
        return field

    def synthesis(self, w: torch.Tensor, c2w: torch.Tensor, window: torch.Tensor | None = None,
                  patch_size: int | None = None, perturb: bool = False, generator: torch.Generator | None = None,
                  ray_chunk: int | None = None, return_aux: bool = False,
                  randomness: Randomness | None = None, mlp: str | None = None) -> Output:
        """Render w [B, w_dim] from c2w [B, 4, 4]: full images, or P x P windows [B, 2] (row0, col0).

        randomness: (perturb=True only) the draws from `sample_randomness`, instead of drawing from `generator`.
        mlp: how to evaluate the NeRF MLP: None (default) = under torch.no_grad the path `render_mlp` names (the
        backend's choice: the fused fp16 Triton kernel of torch_utils/ops/fused_mlp.py where it runs), with autograd
        on the PyTorch path; 'fused' = the kernel (no grad only); 'torch' = the PyTorch path. Measured on an H200
        (docs/PERFORMANCE.md): 128x128, 4 layers, 32 samples, 2,594-2,679 renders/s fused vs 475/s bf16 autocast and
        260/s fp32 on the PyTorch path (mean abs 2.2e-4 vs fp32); 8 layers, 64 samples, 947/s vs 134/s bf16.
        ray_chunk: rays per field call over all B objects; None = DEFAULT_RAY_CHUNK for full images, one call for
        windows.
        Returns img [B, 3, h, w] in [-1, 1] (fp32), and with return_aux also dict(depth, opacity [B, 1, h, w]).
        """
        if (window is None) != (patch_size is None):
            raise UserError("Pass window and patch_size together (or neither for full images); "
                            "G.sample_windows(n, patch_size) draws windows.")
        self._check_patch(patch_size)
        if generator is not None and generator.device.type != w.device.type:
            raise UserError(f"The torch.Generator is on {generator.device} but G runs on {w.device}; "
                            f"create it with torch.Generator(device=...) on the same device.")
        c2w = c2w.to(device=w.device, dtype=w.dtype)
        if ray_chunk is None and window is None:
            ray_chunk = self.DEFAULT_RAY_CHUNK
        if mlp is None:
            mlp = "torch" if torch.is_grad_enabled() else self.render_mlp(w.device)
        elif mlp not in ("fused", "torch"):
            raise ValueError(f"mlp must be None, 'fused' or 'torch', got {mlp!r}")
        field = self._field(w, fused=mlp == "fused")
        img, aux = render_image(field, c2w, self.img_resolution, window=window, patch_size=patch_size,
                                near=self.near, far=self.far, num_samples=self.num_samples,
                                perturb=perturb and self.perturb > 0,
                                raw_noise_std=self.raw_noise_std if perturb else 0.0, generator=generator,
                                ray_chunk=ray_chunk, pixel_center=self.pixel_center, fov_x_rad=self.fov_x_rad,
                                randomness=randomness if perturb else None)
        return (img, aux) if return_aux else img

    def forward(self, z: torch.Tensor, c2w: torch.Tensor | None = None, window: torch.Tensor | None = None,
                patch_size: int | None = None, perturb: bool = False, psi: float = 1.0,
                generator: torch.Generator | None = None, update_w_avg: bool = False,
                ray_chunk: int | None = None, return_aux: bool = False,
                randomness: Randomness | None = None, mlp: str | None = None) -> Output:
        """z [B, z_dim] -> img [B, 3, h, w]; poses from the prior when c2w is None, windows drawn when only P given.

        randomness: pre-drawn renderer randomness (`sample_randomness`, perturb=True only); None draws it here.
        mlp: the NeRF MLP path, as in `synthesis`.
        """
        w = self.mapping(z, psi=psi, update_w_avg=update_w_avg)
        if c2w is None:
            c2w = self.sample_poses(z.shape[0], generator=generator, device=z.device)
        if patch_size is not None and window is None:
            window = self.sample_windows(z.shape[0], patch_size, generator=generator, device=z.device)
        return self.synthesis(w, c2w, window=window, patch_size=patch_size, perturb=perturb, generator=generator,
                              ray_chunk=ray_chunk, return_aux=return_aux, randomness=randomness, mlp=mlp)

    def query_field(self, w: torch.Tensor, pts: torch.Tensor,
                    point_chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise-free field values for meshes: w [B, w_dim], pts [B, N, 3] -> (rgb [B, N, 3] in [0, 1], sigma [B, N]).

        point_chunk: points per object per network call (None = all at once); weights are built once.
        Differentiable; wrap in torch.no_grad() for export.
        """
        field = self._field(w)
        pts = pts.to(device=w.device, dtype=w.dtype)
        step = pts.shape[1] if point_chunk is None else max(1, point_chunk)
        rgbs, sigmas = [], []
        for start in range(0, pts.shape[1], step):
            rgb, raw_sigma = field(pts[:, start:start + step])
            rgbs.append(rgb)
            sigmas.append(density_activation(raw_sigma))
        return torch.cat(rgbs, dim=1), torch.cat(sigmas, dim=1)

    def extra_repr(self) -> str:
        return (f"img_resolution={self.img_resolution}, num_samples={self.num_samples}, near={self.near:g}, "
                f"far={self.far:g}, pixel_center={self.pixel_center:g}")
