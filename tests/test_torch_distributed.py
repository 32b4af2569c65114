"""adamfast.torch under torch.distributed: gloo, 2 ranks on 127.0.0.1, spawned.

Each test spawns two processes that stop by themselves: the process group
has a 60 s timeout, and the parent terminates the ranks if they are not done
within DEADLINE seconds.
"""

import json
import os
import socket
import time
from datetime import timedelta

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import torch.multiprocessing as mp  # noqa: E402

DEADLINE = 120.0
WORLD = 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(fn, *args):
    """Spawn WORLD ranks of fn(rank, port, *args); bounded in time; raise a rank's error."""
    port = _free_port()
    ctx = mp.start_processes(fn, args=(port,) + args, nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + DEADLINE
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"ranks did not finish within {DEADLINE} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)


def _init(rank, port):
    # 2 ranks on 2 cores.  ADAMFAST_NUM_THREADS would be read too late here: the
    # worker imported adamfast already.
    import adamfast

    adamfast.set_num_threads(1)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=60))


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8),
                               torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _batches(rank, n=6):
    g = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(16, 12, generator=g), torch.randn(16, 2, generator=g)) for _ in range(n)]


def _allclose(a, b):
    return all(torch.allclose(x, y, rtol=1e-5, atol=1e-6) for x, y in zip(a, b))


def _zero_worker(rank, port):
    import adamfast.torch as aft
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    _init(rank, port)
    try:
        results = []
        for cls in (torch.optim.AdamW, aft.AdamW):
            model = DDP(_model())
            opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, lr=1e-2,
                                          weight_decay=0.1)
            for x, y in _batches(rank):
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()
            results.append([p.detach().clone() for p in model.parameters()])
            if cls is aft.AdamW:  # each rank stepped only its shard, with adamfast
                assert isinstance(opt.optim, aft.AdamW)
                assert 0 < len(opt.optim.param_groups[0]["params"]) < 6
        assert _allclose(results[0], results[1]), "ZeRO with adamfast differs from torch"
        # The ranks agree after ZeRO's broadcasts.
        for p in results[1]:
            other = p.clone()
            dist.broadcast(other, src=0)
            assert torch.equal(other, p)
        # ZeRO holds the process group: drop it first, as the DDP worker does.
        del model, opt
        import gc

        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _ddp_worker(rank, port):
    import adamfast.torch as aft
    from torch.nn.parallel import DistributedDataParallel as DDP

    _init(rank, port)
    try:
        results = []
        for make in (lambda ps: torch.optim.Adam(ps, lr=1e-2),
                     lambda ps: aft.Adam(ps, lr=1e-2)):
            for bucket_view in (False, True):
                model = DDP(_model(), gradient_as_bucket_view=bucket_view)
                opt = make(model.parameters())
                for x, y in _batches(rank):
                    opt.zero_grad(set_to_none=False)
                    torch.nn.functional.mse_loss(model(x), y).backward()
                    opt.step()
                results.append([p.detach().clone() for p in model.parameters()])
        for r in results[1:]:
            assert _allclose(results[0], r), "DDP with adamfast differs from torch"
        # Tear down in order: DDP's reducer must go before its process group
        # (left to interpreter exit, gloo sometimes aborted the rank with
        # "terminate called without an active exception").
        del model, opt
        import gc

        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _fsdp_worker(rank, port, out):
    import adamfast.torch as aft

    _init(rank, port)
    record = {}
    try:
        from torch.distributed.fsdp import CPUOffload
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        results = []
        for cls in (torch.optim.Adam, aft.Adam):
            try:
                model = FSDP(_model(), cpu_offload=CPUOffload(offload_params=True))
                opt = cls(model.parameters(), lr=1e-2)
                for x, y in _batches(rank, 3):
                    opt.zero_grad()
                    torch.nn.functional.mse_loss(model(x), y).backward()
                    opt.step()
                with FSDP.summon_full_params(model):
                    results.append([p.detach().clone() for p in model.parameters()])
                record[cls.__module__] = "ok"
            except Exception as exc:  # noqa: BLE001
                record[cls.__module__] = f"{type(exc).__name__}: {exc}"[:600]
        if len(results) == 2:
            record["equal"] = _allclose(results[0], results[1])
    finally:
        if rank == 0:
            with open(out, "w") as f:
                json.dump(record, f)
        dist.destroy_process_group()


def test_zero_redundancy_optimizer_with_adamfast_equals_torch():
    _run(_zero_worker)


def test_ddp_with_adamfast_optimizer():
    _run(_ddp_worker)


def test_fsdp_cpu_offload(tmp_path):
    """FSDP(CPUOffload(offload_params=True)) on gloo: run, and report what torch says."""
    out = tmp_path / "fsdp.json"
    _run(_fsdp_worker, str(out))
    record = json.loads(out.read_text())
    if record.get("torch.optim.adam") != "ok":
        pytest.skip(f"FSDP CPU offload does not run on CPU/gloo with torch.optim itself: "
                    f"{record.get('torch.optim.adam')}")
    assert record.get("adamfast.torch") == "ok", record
    assert record.get("equal"), record
