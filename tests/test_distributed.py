"""Two gloo processes on the CPU: the flat gradient all-reduce, the stats sync, and a full smoke run whose ranks end
with identical parameters (the same code path torchrun uses with NCCL on GPUs)."""
import os
import socket

import torch
import torch.multiprocessing as mp
from conftest import random_pngs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data: str, outdir: str, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from torch_utils import distributed as dist_utils
    from torch_utils.training_stats import Collector
    from training.config import resolve_config
    from training.training_loop import open_dataset, training_loop
    import train

    cfg = resolve_config("smoke", ["grid_w=2", "grid_h=2", "d_reg_interval=2"],
                         {"data": data, "kimg": 0.016, "gpus": world, "batch": 4})
    r, w, device = dist_utils.init(cfg.gpus)
    assert (r, w) == (rank, world)
    # Flat all-reduce averages gradients; missing grads count as zeros.
    p, q = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.full([3], float(rank + 1))
    dist_utils.all_reduce_grads([p, q])
    assert torch.equal(p.grad, torch.full([3], 1.5)) and torch.equal(q.grad, torch.zeros(2))
    # The stats bus reduces over ranks.
    col = Collector()
    col.report("x", torch.tensor([float(rank)] * (rank + 1)))
    stats = col.sync()
    assert stats["x"]["num"] == 3 and abs(stats["x"]["mean"] - 2 / 3) < 1e-9
    data_pair = open_dataset(cfg, rank)
    run_dir = train._prepare_run_dir(cfg, ["smoke"], outdir, None, rank, None)
    run = training_loop(cfg, run_dir, device, rank=rank, world=world, data=data_pair)
    torch.save({"G_ema": run.G_ema.state_dict(), "D": run.D.state_dict(), "G": run.G.state_dict(),
                "run_dir": str(run_dir), "cur_nimg": run.cur_nimg}, os.path.join(result_dir, f"rank{rank}.pt"))
    dist_utils.shutdown()


def test_two_gloo_ranks_end_identical(tmp_path):
    data = random_pngs(tmp_path / "data", 8, 32, name="{i}.png")
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(data), str(tmp_path / "runs"), str(results)), nprocs=2, join=True)
    a, b = (torch.load(results / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert a["run_dir"] == b["run_dir"] and a["cur_nimg"] == b["cur_nimg"] == 16
    for key in ("G", "G_ema", "D"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs between ranks"
    run_dir = tmp_path / "runs" / os.path.basename(a["run_dir"])
    assert (run_dir / "network-snapshot-000000.pkl").is_file() and (run_dir / "training-state-000000.pt").is_file()
    assert len([d for d in (tmp_path / "runs").iterdir()]) == 1          # rank 0 alone made the run directory
