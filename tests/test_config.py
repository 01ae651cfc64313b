"""Config schema, presets, composition order and user-facing validation errors."""
import json

import pytest

from dnnlib.util import UserError
from training.config import TrainConfig, list_presets, load_preset, parse_set, resolve_config

EXPECTED_PRESETS = {"t4", "standard", "carla", "cars", "planes", "chairs", "ns8", "patch8", "noaug", "gamma05",
                    "smoke"}


def test_all_presets_exist_and_resolve():
    assert EXPECTED_PRESETS <= set(list_presets())
    for name in list_presets():
        assert isinstance(load_preset(name), dict)
        resolve_config(name)


def test_dataset_presets_match_reference():
    layers = {"carla": 4, "cars": 8, "planes": 4, "chairs": 8}
    gamma = {"carla": 1.0, "cars": 1.0, "planes": 1.0, "chairs": 0.1}
    for name in layers:
        cfg = resolve_config(name)
        assert cfg.num_layers == layers[name] and cfg.r1_gamma == gamma[name]
        assert cfg.data == f"synth:{name}"
    t4, std = resolve_config("t4"), resolve_config("standard")
    assert (t4.patch_size, t4.num_samples, t4.batch) == (32, 32, 4)
    assert (std.patch_size, std.num_samples) == (64, 64)
    assert resolve_config("ns8").num_samples == 8 and resolve_config("patch8").patch_size == 8
    assert resolve_config("noaug").p == 0 and resolve_config("gamma05").r1_gamma == 0.5


def test_precedence_presets_then_set_then_flags():
    assert resolve_config("chairs,t4").num_layers == 8            # t4 does not touch layers
    assert resolve_config("t4,standard").patch_size == 64         # later preset wins
    assert resolve_config("standard,t4").patch_size == 32
    cfg = resolve_config("chairs", ["r1_gamma=0.7", "num_layers=4"], {"r1_gamma": 0.3, "batch": None})
    assert cfg.r1_gamma == 0.3 and cfg.num_layers == 4 and cfg.batch == 4


def test_set_parses_types():
    assert parse_set("batch=8") == ("batch", 8)
    assert parse_set("r1_gamma=1") == ("r1_gamma", 1.0)
    assert parse_set("mirror=false") == ("mirror", False)
    assert parse_set("azim_range_deg=[-90,90]") == ("azim_range_deg", [-90, 90])
    assert parse_set("metrics=fid1k_full,kid1k_full") == ("metrics", ["fid1k_full", "kid1k_full"])
    with pytest.raises(UserError, match="type int"):
        parse_set("batch=four")
    with pytest.raises(UserError, match="key=value"):
        parse_set("batch")


def test_unknown_preset_and_key_list_valid_ones():
    with pytest.raises(UserError, match=r"Unknown preset 'nope'.*chairs.*smoke"):
        resolve_config("chairs,nope")
    with pytest.raises(UserError, match=r"r1_gama.*did you mean 'r1_gamma'.*Valid keys"):
        resolve_config("chairs", ["r1_gama=1"])


@pytest.mark.parametrize("sets, pattern", [
    (["batch=6", "gpus=4"], "not divisible by gpus"),
    (["batch=6", "mbstd_group=4"], "minibatch-stddev group"),
    (["patch_size=64", "synth_resolution=32"], r"larger than the data resolution 32.*patch_size=32"),
    (["patch_size=24"], "power of two"),
    (["precision=fp8"], "precision"),
    (["aug=strong"], "aug"),
    (["impl=triton"], "impl 'triton' is not one of auto, reference"),
    (["p=1.5"], r"p must be in \[0, 1\]"),
    (["kimg=0"], "kimg must be > 0"),
])
def test_impossible_combinations(sets, pattern):
    with pytest.raises(UserError, match=pattern):
        resolve_config("chairs", sets)


def test_patch_larger_than_synth_spec_resolution():
    with pytest.raises(UserError, match="larger than the data resolution 16"):
        resolve_config("t4", [], {"data": "synth:chairs:16"})


def test_p_default_depends_on_aug_mode():
    assert resolve_config().p == 0.5
    assert resolve_config(None, ["aug=ada"]).p == 0.0
    assert resolve_config(None, ["aug=ada", "p=0.2"]).p == 0.2


def test_round_trip_and_kwargs():
    cfg = resolve_config("chairs,smoke", ["azim_std_deg=5"])
    d = cfg.to_dict()
    assert TrainConfig.from_dict(json.loads(json.dumps(d))) == cfg
    gk = cfg.G_kwargs(32)
    assert gk["img_resolution"] == 32 and gk["num_layers"] == 8 and gk["azim_std_deg"] == 5.0
    assert resolve_config("chairs").G_kwargs(128)["azim_std_deg"] is None
    assert cfg.D_kwargs()["img_resolution"] == cfg.patch_size
    assert resolve_config("noaug").augment_kwargs() == {"mode": "noaug", "patch_size": 32, "p": 0.0, "max_spacing": 1.0}
    with pytest.raises(UserError, match="Unknown config key"):
        TrainConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(UserError, match="must be of type int"):
        TrainConfig(batch=4.5)


def test_run_directory_description_names_random_scale_windows():
    assert resolve_config("chairs,t4").desc(["chairs", "t4"]) == "chairs-t4-synth_chairs-b4-fixed"
    rs = resolve_config("cars,t4", ["patch_max_spacing=4.096"])
    assert rs.desc(["cars", "t4"]) == "cars-t4-synth_cars-b4-fixed-rs4.096"
    assert resolve_config("noaug").desc(["noaug"]).endswith("-b4-noaug")


def test_impl_is_the_one_implementation_switch():
    from training.config import RETIRED_KEYS, field_names
    assert TrainConfig().impl == "auto" and resolve_config(None, ["impl=reference"]).impl == "reference"
    assert len(field_names()) <= 65 and not set(RETIRED_KEYS) & set(field_names())
    perf = {"impl", "workers", "ray_chunk"}                     # the keys that only choose how fast, not what
    assert perf <= set(field_names())


def test_saved_configs_with_retired_keys_still_load(capsys):
    """A training state or snapshot from before the backend stored its implementation keys: they are dropped with
    one line that names them, and the rest of the config is kept."""
    saved = {**resolve_config("chairs").to_dict(), "cuda_graphs": False, "d_fir": "grouped", "d_step_overlap": True,
             "metrics_mlp": "torch"}
    saved.pop("impl")
    cfg = TrainConfig.from_dict(saved)
    assert cfg == resolve_config("chairs")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln]
    assert len(lines) == 1 and "ignored: cuda_graphs, d_fir, d_step_overlap, metrics_mlp" in lines[0]
    assert resolve_config(None, ["seed=3"], base=saved).seed == 3                 # train.py --resume
    with pytest.raises(UserError, match="Unknown config key 'd_fir'"):           # new input is still checked
        resolve_config(None, ["d_fir=pool"])
