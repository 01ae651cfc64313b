"""The authors' released snapshots: read without executing anything, rebuilt as our networks, used by every tool.

The files are written by tests/authors_files.py from the documented format of those snapshots (no code of theirs).
"""
from __future__ import annotations

import json
import os

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import invoke, random_pngs

import authors_files as af
import calc_metrics
import convert_network
import generate
import train
from dnnlib.util import UserError, run_cli
from training import official
from training.checkpoint import load_network_snapshot, save_network_snapshot
from training.networks.generator import Generator
from training.video import to_uint8

# Small networks in the authors' layout (z and w of 128 as in theirs) for the tool tests.
SMALL = dict(num_layers=4, width=16, z_dim=128, w_dim=128, img_resolution=16, n_samples=4, patch_size=8)


def small_snapshot(path, seed: int = 0, **overrides) -> dict[str, torch.Tensor]:
    kw = {**SMALL, **overrides}
    g = af.generator_tensors(num_layers=kw["num_layers"], width=kw["width"], z_dim=kw["z_dim"], w_dim=kw["w_dim"],
                             seed=seed)
    af.write_snapshot(path, G_ema_state=g, **kw)
    return g


def test_the_table_names_exactly_the_globals_of_the_released_files():
    documented = {
        "torch_utils.persistence._reconstruct_persistent_obj", "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter", "torch.storage._load_from_bytes", "torch.nn.modules.container.ModuleList",
        "collections.OrderedDict", "collections.defaultdict", "builtins.dict", "builtins.getattr",
        "torch._C._VariableFunctionsClass", "functools.partial", "dnnlib.util.EasyDict", "nerf.run_nerf.run_network",
        "nerf.run_nerf_helpers._embed", "nerf.run_nerf_helpers.Embedder",
        "nerf.run_nerf_helpers.Embedder._embedding_fn",
        "nerf.run_nerf_helpers.Embedder._identity", "numpy.core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar", "numpy.ndarray", "numpy.dtype", "omegaconf.dictconfig.DictConfig",
        "omegaconf.base.ContainerMetadata", "omegaconf.base.Metadata", "omegaconf.nodes.AnyNode", "typing.Any"}
    numpy2 = {"numpy._core.multiarray._reconstruct", "numpy._core.multiarray.scalar"}
    assert len(documented) == 26
    assert {f"{m}.{n}" for m, n in official.GLOBALS} == documented | numpy2


@pytest.mark.parametrize("num_layers, params", [(4, 1_498_658), (8, 2_975_000)])
def test_full_snapshot_state_dicts_equal_bit_for_bit(tmp_path, num_layers, params):
    g_ema = af.generator_tensors(num_layers=num_layers, seed=0)
    g = af.generator_tensors(num_layers=num_layers, seed=1)
    d = af.discriminator_tensors(patch_size=16, channel_base=512, channel_max=16)
    path = tmp_path / "network-snapshot-001600.pkl"
    data = af.write_snapshot(path, G_state=g, G_ema_state=g_ema, D_state=d, num_layers=num_layers, patch_size=16)
    assert data[:2] == b"\x80\x04" and b"\x95" in data[:16]          # protocol 4, framed
    snap = load_network_snapshot(path)
    for net, ref in ((snap.G_ema, g_ema), (snap.G, g)):
        theirs = official.authors_generator_state(net)
        assert theirs.keys() == ref.keys() and all(torch.equal(theirs[k], ref[k]) for k in ref)
        assert sum(v.numel() for v in theirs.values()) == params
    d_ours = snap.D.state_dict()
    assert d_ours.keys() == {k for k in d if not k.endswith("resample_filter")}
    assert all(torch.equal(v, d[k]) for k, v in d_ours.items())
    kw = snap.G_ema.init_kwargs
    assert (kw["num_layers"], kw["num_samples"], kw["pixel_center"], kw["img_resolution"]) == (num_layers, 64, 0.0, 128)
    assert kw["azim_range_deg"] == [-180.0, 180.0] and kw["elev_range_deg"] == [0.0, 90.0]
    assert (kw["render_size"], kw["rank"], kw["fov_x_rad"]) == (2.0, 10, 0.6911112070083618)
    assert snap.config["patch_size"] == 16 and snap.config["pixel_center"] == 0.0 and snap.kimg == 1600.0
    assert float(snap.augment_pipe.p) == 0.5
    assert snap.training_set_kwargs["path"] == "data/carla.zip"


def test_g_ema_only_file_with_numpy2_spelling_and_cpu_tags(tmp_path):
    g = af.generator_tensors(num_layers=8, seed=2)
    path = tmp_path / "model.bin"
    af.write_snapshot(path, G_ema_state=g, num_layers=8, numpy_core="numpy._core", ws_location="cpu")
    snap = load_network_snapshot(path)
    assert snap.G is None and snap.D is None and snap.augment_pipe is None
    theirs = official.authors_generator_state(snap.G_ema)
    assert all(torch.equal(theirs[k], g[k]) for k in g)
    assert snap.config["patch_size"] == 64 and snap.kimg == 0.0


def test_records_keep_views_of_their_storages(tmp_path):
    """current_ws is a [1, w] view at offset (batch - 1) * w of a cuda:0-tagged storage; each Embedder frequency is a
    0-d view into one 10-element storage: both come back as their own values on the CPU."""
    path = tmp_path / "snap.pkl"
    small_snapshot(path)
    data = official.read_records(path)
    synthesis = data["G_ema"].state["_modules"]["synthesis"].state
    ws = torch.randn(1, 128, generator=torch.Generator().manual_seed(7))
    assert torch.equal(synthesis["current_ws"], ws[-1:])
    embedder = synthesis["embed_fn"].state[2]["embedder"]
    freqs = [fn.state[2]["freq"] for fn in embedder.state["embed_fns"][1::2]]
    assert torch.equal(torch.stack(freqs), 2.0 ** torch.linspace(0, 9, 10))
    assert np.asarray(synthesis["K"])[0, 2] == 8.0 and float(synthesis["fov"]) == 0.6911112070083618


def test_render_equals_our_generator_with_the_same_weights(tmp_path):
    torch.manual_seed(0)
    G = Generator(num_layers=8, width=16, z_dim=16, w_dim=16, img_resolution=12, num_samples=6, pixel_center=0.0,
                  elev_range_deg=[0.0, 90.0])
    path = tmp_path / "snap.pkl"
    af.write_snapshot(path, G_ema_state=official.authors_generator_state(G), num_layers=8, width=16, z_dim=16,
                      w_dim=16, img_resolution=12, n_samples=6, patch_size=8)
    G2 = load_network_snapshot(path).G_ema
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    c2w = G.sample_poses(3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = G(z, c2w), G2(z, c2w)
        centred = Generator(**{**G.init_kwargs, "pixel_center": 0.5})
        centred.load_state_dict(G.state_dict())
        shifted = centred(z, c2w)
    assert torch.equal(ours, theirs)
    assert not torch.allclose(shifted, theirs)          # the pixel-centre convention is carried over


def test_w_avg_is_the_mean_of_w(tmp_path):
    path = tmp_path / "snap.pkl"
    small_snapshot(path)
    G = load_network_snapshot(path).G_ema
    with torch.no_grad():
        w = G.mapping(torch.randn(20_000, 128, generator=torch.Generator().manual_seed(123)))
    se = w.std(dim=0) * (1 / 20_000 + 1 / official.W_AVG_SAMPLES) ** 0.5    # std error of the difference of means
    assert ((G.mapping_network.w_avg - w.mean(dim=0)).abs() < 5 * se).all()
    z = torch.randn(2, 128)
    with torch.no_grad():
        assert torch.allclose(G.mapping(z, psi=0.0), G.mapping_network.w_avg.expand(2, -1))


def test_detection_reads_the_content_not_the_name(tmp_path):
    theirs = tmp_path / "weights.dat"
    small_snapshot(theirs)
    ours = tmp_path / "carla_improved_1600.pkl"
    save_network_snapshot(ours, G=Generator(z_dim=8, w_dim=8, num_layers=1, width=8), G_ema=None)
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(os.urandom(256))
    assert official.is_authors_snapshot(theirs)
    assert not official.is_authors_snapshot(ours) and not official.is_authors_snapshot(junk)


# ---------------------------------------------------------------------------------------------------------------------
# Crafted files: refused with a clear error, nothing executed.

def _crafted(kind: str, sentinel) -> tuple[dict, dict]:
    """(write_snapshot overrides, expected message fragment) of one crafted variant."""
    write = f"open({str(sentinel)!r}, 'w').write('ran')"
    blob = lambda inner: af.Reduce(af.Global("torch.storage", "_load_from_bytes"),  # noqa: E731
                                   (af.storage_blob(torch.zeros(3), inner=inner),))
    variants = {
        "unknown_global": (af.Reduce(af.Global("nerf.run_nerf", "render_path"), ()), "nerf.run_nerf.render_path"),
        "builtins_eval": (af.Reduce(af.Global("builtins", "eval"), (write,)), "builtins.eval"),
        "os_system": (af.Reduce(af.Global("os", "system"), (f"touch {sentinel}",)), "os.system"),
        "getattr_of_a_module": (af.Reduce(af.Global("builtins", "getattr"), (af.Global("os", "system"), "x")),
                                "os.system"),
        "storage_runs_code": (blob(af.Reduce(af.Global("os", "system"), (f"touch {sentinel}",))),
                              "the global 'os.system'"),
        "storage_eval": (blob(af.Reduce(af.Global("builtins", "exec"), (write,))), "'builtins.exec'"),
        "storage_truncated": (af.Reduce(af.Global("torch.storage", "_load_from_bytes"),
                                        (af.storage_blob(torch.zeros(8))[:-5],)), "storage data holds 27 bytes"),
        "view_past_storage": (af.Reduce(af.Global("torch._utils", "_rebuild_tensor_v2"),
                                        (blob(None), 2, (2, 2), (2, 1), False, af.odict([]))),
                              "reaches past its storage"),
        "persistent_id": (af.PersId("x"), "persistent id"),
    }
    node, message = variants[kind]
    return {"replace": {"augment_pipe": node}}, message


CRAFTED = ["unknown_global", "builtins_eval", "os_system", "getattr_of_a_module", "storage_runs_code", "storage_eval",
           "storage_truncated", "view_past_storage", "persistent_id"]


@pytest.mark.parametrize("kind", CRAFTED)
def test_crafted_files_are_refused_and_nothing_runs(tmp_path, kind):
    sentinel = tmp_path / "sentinel"
    overrides, message = _crafted(kind, sentinel)
    path = tmp_path / "crafted.pkl"
    af.write_snapshot(path, G_ema_state=af.generator_tensors(width=16, seed=0), **{**SMALL, **overrides})
    assert official.is_authors_snapshot(path)
    with pytest.raises(UserError) as exc:
        load_network_snapshot(path)
    assert message in str(exc.value) and "Nothing from the file was executed" in str(exc.value)
    assert not sentinel.exists()


def test_truncated_file_and_wrong_shapes_are_refused(tmp_path):
    path = tmp_path / "snap.pkl"
    data = af.write_snapshot(path, G_ema_state=af.generator_tensors(width=16), **SMALL)
    for cut in (len(data) // 3, len(data) - 2):
        path.write_bytes(data[:cut])
        with pytest.raises(UserError, match="truncated"):
            load_network_snapshot(path)
    g = af.generator_tensors(width=16)
    g["synthesis.pts_linears.2.affine.weight"] = torch.zeros(3, 128)
    af.write_snapshot(path, G_ema_state=g, **SMALL)
    with pytest.raises(UserError, match=r"'nerf.layers.2.affine.weight' has shape \[3, 128\].*needs \[320, 128\]"):
        load_network_snapshot(path)
    g = af.generator_tensors(width=16)
    g["mapping.fc1.bias"][5] = float("nan")
    af.write_snapshot(path, G_ema_state=g, **SMALL)
    with pytest.raises(UserError, match="'mapping_network.layers.1.bias' holds NaN"):
        load_network_snapshot(path)


def test_crafted_file_through_generate_exits_1_without_running(tmp_path, capsys):
    sentinel = tmp_path / "sentinel"
    overrides, _ = _crafted("os_system", sentinel)
    path = tmp_path / "network-snapshot-000100.pkl"
    af.write_snapshot(path, G_ema_state=af.generator_tensors(width=16), **{**SMALL, **overrides})
    code, _, err = invoke(generate.main, ["images", "--network", path, "--seeds", "0", "--outdir", tmp_path / "o",
                                          "--device", "cpu"], capsys)
    assert code == 1 and "os.system" in err and "Traceback" not in err
    assert not sentinel.exists()


# ---------------------------------------------------------------------------------------------------------------------
# Tools.

def test_generate_images_renders_seed_z_from_the_pose_at_native_resolution(tmp_path, capsys):
    path = tmp_path / "carla.pkl"
    small_snapshot(path)
    code, _, err = invoke(generate.main, ["images", "--network", path, "--seeds", "0", "--pose", "40,25", "--outdir",
                                          tmp_path / "out", "--device", "cpu", "--impl", "reference"], capsys)
    assert code == 0, err
    img = np.asarray(PIL.Image.open(tmp_path / "out" / "seed0000.png"))
    G = load_network_snapshot(path).G_ema
    z = torch.randn([1, 128], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = G.synthesis(G.mapping(z), generate.poses(G, [40.0], [25.0], torch.device("cpu")))
    assert img.shape == (16, 16, 3) and np.array_equal(img, to_uint8(ref)[0])


def test_generate_interp_and_orbit(tmp_path, capsys):
    path = tmp_path / "carla.pkl"
    small_snapshot(path)
    base = ["--network", path, "--device", "cpu", "--frames", "2"]
    code, _, err = invoke(generate.main, ["interp", *base, "--seeds", "0-1", "--steps", "3",
                                          "--out", tmp_path / "i.gif"], capsys)
    assert code == 0, err
    code, _, err = invoke(generate.main, ["orbit", *base, "--seeds", "0-1", "--out", tmp_path / "o.gif"], capsys)
    assert code == 0, err
    assert (tmp_path / "i.png").is_file() and (tmp_path / "i.gif").is_file() and (tmp_path / "o.gif").is_file()


def test_calc_metrics_fid1k_on_an_authors_snapshot(tmp_path, capsys, monkeypatch, standin_detector):
    monkeypatch.setenv("HNG_CACHE_DIR", str(tmp_path / "cache"))
    reals = random_pngs(tmp_path / "reals", 8, 8, name="{i}.png")
    path = tmp_path / "network-snapshot-000400.pkl"
    small_snapshot(path, img_resolution=8, n_samples=2)
    code, out, err = invoke(calc_metrics.main, ["--network", path, "--metrics", "fid1k_full", "--data", reals,
                                                "--detector", standin_detector, "--device", "cpu", "--batch", "500"],
                            capsys)
    assert code == 0, err
    rec = json.loads((tmp_path / "metric-fid1k_full.jsonl").read_text().splitlines()[0])
    assert rec["n_fake"] == 1000 and rec["kimg"] == 400.0 and rec["results"]["fid1k_full"] > 0


def test_convert_writes_our_format_with_the_same_networks(tmp_path, capsys):
    src, dest = tmp_path / "cars.pkl", tmp_path / "network-snapshot-000000.pkl"
    small_snapshot(src, num_layers=8)
    code, out, err = invoke(run_cli(convert_network.main), ["--source", src, "--dest", dest], capsys)
    assert code == 0, err
    assert "pixel_center 0" in out
    assert not official.is_authors_snapshot(dest)
    a, b = load_network_snapshot(src).G_ema, load_network_snapshot(dest).G_ema
    assert a.init_kwargs == b.init_kwargs
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    before = dest.read_bytes()
    code, _, err = invoke(run_cli(convert_network.main), ["--source", src, "--dest", dest], capsys)
    assert code == 1 and "--force" in err and dest.read_bytes() == before


def _smoke_snapshot(path) -> tuple[dict, dict]:
    """An authors'-format file whose networks fit the smoke preset (width 32, 16 px patches, its small D)."""
    g = af.generator_tensors(num_layers=4, width=32, seed=4)
    d = af.discriminator_tensors(patch_size=16, channel_base=1024, channel_max=64)
    af.write_snapshot(path, G_state=g, G_ema_state=g, D_state=d, num_layers=4, width=32, img_resolution=32,
                      patch_size=16, d_channel_base=1024, d_channel_max=64)
    return g, d


def test_finetune_starts_from_the_snapshot_weights(tmp_path):
    from training.config import resolve_config
    from training.finetune import apply_start, check_start, load_start
    from training.training_loop import build_networks
    path = tmp_path / "theirs.pkl"
    g, d = _smoke_snapshot(path)
    start = load_start(path)
    cfg = resolve_config("smoke", base=start.config)
    assert check_start(cfg, start, 32) == ["num_samples 8 vs 64"]
    nets = build_networks(cfg, 32, torch.device("cpu"))
    apply_start(nets, start)
    for key in ("G", "G_ema"):
        theirs = official.authors_generator_state(nets[key])
        assert all(torch.equal(theirs[k], g[k]) for k in g)
    assert all(torch.equal(v, d[k]) for k, v in nets.D.state_dict().items())
    with pytest.raises(UserError, match="do not fit the snapshot's tensors"):
        check_start(resolve_config("smoke", ["patch_size=8"], base=start.config), start, 32)


@pytest.mark.slow  # a short CPU training run (~10 s)
def test_finetune_run_through_train_py(tmp_path, capsys, tiny_data):
    path = tmp_path / "theirs.pkl"
    _smoke_snapshot(path)
    data = tiny_data
    args = ["--outdir", tmp_path / "runs", "--cfg", "smoke", "--data", data, "--kimg", "0.02", "--set", "grid_w=2",
            "--set", "grid_h=2"]
    code, out, err = invoke(run_cli(train.main), [*args, "--finetune", path], capsys)
    assert code == 0, err
    run_dir = next((tmp_path / "runs").iterdir())
    started = json.loads((run_dir / "training_options.json").read_text())["started_from"]
    assert started["path"] == str(path) and started["format"] == official.AUTHORS_FORMAT
    assert len(started["sha256"]) == 64 and started["modules"] == ["G", "G_ema", "D"]
    assert (run_dir / "network-snapshot-000000.pkl").is_file() and "Fine-tuning from" in out
    code, _, err = invoke(run_cli(train.main), [*args, "--finetune", path, "--set", "width=16"], capsys)
    assert code == 1 and "do not fit" in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["builtins_eval", "os_system"])
def test_the_crafted_payloads_are_live(tmp_path, kind):
    """The payloads above do run when stdlib pickle loads them on their own: their refusal is the reader's doing."""
    import pickle
    sentinel = tmp_path / "sentinel"
    overrides, _ = _crafted(kind, sentinel)
    pickle.loads(af.PickleWriter(protocol=4).dumps(overrides["replace"]["augment_pipe"]))
    assert sentinel.exists()


def test_finetune_from_one_of_our_snapshots_takes_its_settings(tmp_path):
    from training.config import resolve_config
    from training.finetune import check_start, load_start
    from training.networks.discriminator import Discriminator
    cfg = resolve_config("smoke", ["num_layers=2", "pixel_center=0.25", "elev_range_deg=10,80"])
    torch.manual_seed(3)
    G, D = Generator(**cfg.G_kwargs(32)), Discriminator(**cfg.D_kwargs())
    path = tmp_path / "network-snapshot-000012.pkl"
    save_network_snapshot(path, G=G, G_ema=G, D=D, config=cfg.to_dict(), kimg=12.0)
    start = load_start(path)
    assert start.origin["format"] == "hypernerfgan-snapshot/2" and start.origin["kimg"] == 12.0
    run_cfg = resolve_config(None, [], {"data": "x"}, base=start.config)
    assert (run_cfg.num_layers, run_cfg.pixel_center, run_cfg.elev_range_deg) == (2, 0.25, [10, 80])
    assert check_start(run_cfg, start, 32) == []
