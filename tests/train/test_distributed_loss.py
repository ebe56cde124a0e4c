"""Two real torchrun processes on gloo versus one process on the same global batch.

What is compared (the gradient convention of evaclip.train.loss): the global loss is the mean of the
per-rank losses; parameter gradients after DDP's averaging equal the single-process gradients of the
global loss; and each rank's feature gradients equal world_size times the single-process gradient of the
global loss w.r.t. those rows (the differentiable gather sums what every rank sends back; the constant
gather scales its local slice's gradient by world_size to match).
"""

import importlib.util
from pathlib import Path

import pytest
import torch

WORKERS = Path(__file__).parent / "workers"
WORLD = 2


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"evaclip_test_{name}", WORKERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    tmp = tmp_path_factory.mktemp("dist_loss")
    g = torch.Generator().manual_seed(123)
    per_rank, d_in, d = 3, 7, 5
    data = {
        "x_img": torch.randn(WORLD * per_rank, d_in, generator=g, dtype=torch.float64),
        "x_txt": torch.randn(WORLD * per_rank, d_in, generator=g, dtype=torch.float64),
        "img_proj": torch.randn(d_in, d, generator=g, dtype=torch.float64),
        "txt_proj": torch.randn(d_in, d, generator=g, dtype=torch.float64),
        "logit_scale": torch.tensor([1.7], dtype=torch.float64),
        "logit_bias": torch.tensor([-2.0], dtype=torch.float64),
        # captions of pairs 0 and 4 (different ranks) and of pairs 1 and 2 (rank 0) are identical
        "tokens": torch.tensor([[7, 1, 0], [8, 2, 0], [8, 2, 0], [9, 3, 3], [7, 1, 0], [5, 5, 0]]),
    }
    torch.save(data, tmp / "batch.pt")
    _load("torchrun").run_torchrun(WORKERS / "dist_loss_worker.py", str(tmp / "batch.pt"), str(tmp), nproc=WORLD)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert [r["rank"] for r in ranks] == list(range(WORLD)) and ranks[0]["world_size"] == WORLD

    worker = _load("dist_loss_worker")
    reference = {}
    for name, make_loss in worker.LOSSES.items():
        model = worker.TinyTowers(data, with_bias=name == "siglip")
        img, txt, scale, bias = model(data["x_img"], data["x_txt"])
        img.retain_grad()
        txt.retain_grad()
        loss = worker.compute_loss(name, make_loss(), img, txt, scale, bias, data["tokens"])
        loss.backward()
        ref = {"loss": loss.detach(), "img_grad": img.grad, "txt_grad": txt.grad}
        ref.update({f"param.{n}": p.grad for n, p in model.named_parameters() if p.grad is not None})
        reference[name] = ref
    return reference, [r["results"] for r in ranks]


@pytest.mark.parametrize("name", ["clip_local", "clip_global", "clip_global_nograd", "siglip", "clip_local_dedup",
                                  "clip_global_dedup"])
def test_two_ranks_match_one_process(runs, name: str) -> None:
    reference, ranks = runs
    ref = reference[name]
    b = ref["img_grad"].shape[0] // WORLD
    for rank, results in enumerate(ranks):
        got = results[name]
        torch.testing.assert_close(got["loss_mean"], ref["loss"])
        if name.startswith("clip_global"):  # every rank computes the whole loss
            torch.testing.assert_close(got["loss"], ref["loss"])
        rows = slice(rank * b, (rank + 1) * b)
        torch.testing.assert_close(got["img_grad"], WORLD * ref["img_grad"][rows])
        torch.testing.assert_close(got["txt_grad"], WORLD * ref["txt_grad"][rows])
        param_keys = sorted(k for k in ref if k.startswith("param."))
        assert sorted(k for k in got if k.startswith("param.")) == param_keys
        for key in param_keys:
            torch.testing.assert_close(got[key], ref[key], msg=f"{name} {key} rank {rank}")
    expected = {"param.img_proj", "param.txt_proj", "param.logit_scale"}
    expected |= {"param.logit_bias"} if name == "siglip" else set()
    assert {k for k in ref if k.startswith("param.")} == expected


def test_the_batch_has_duplicates_that_change_the_loss(runs) -> None:
    # Guards the dedup cases: the masking is not a no-op on this batch.
    reference, _ = runs
    assert not torch.allclose(reference["clip_local_dedup"]["loss"], reference["clip_local"]["loss"])


def test_local_losses_differ_between_ranks(runs) -> None:
    # Guards the test itself: with local loss the ranks really hold different rows.
    _, ranks = runs
    assert not torch.allclose(ranks[0]["clip_local"]["loss"], ranks[1]["clip_local"]["loss"])


def test_single_process_helpers_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    from evaclip.train import distributed as d

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = d.init_distributed(backend="gloo")
    assert (info.rank, info.world_size, info.local_rank, info.device.type) == (0, 1, 0, "cpu")
    assert info.is_main and not info.is_distributed and d.is_main() and d.get_world_size() == 1
    d.barrier()
    x = torch.tensor([1.0, 3.0])
    y = d.all_reduce_mean(x)
    assert torch.equal(y, x) and y is not x
    d.destroy()


def test_bad_launch_environment_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    from evaclip.errors import ConfigError
    from evaclip.train.distributed import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        init_distributed()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ConfigError, match="RANK=5"):
        init_distributed()


def test_collective_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """EVACLIP_DIST_TIMEOUT_S reaches init_process_group as a timedelta; a negative value is refused."""
    from datetime import timedelta

    from evaclip.errors import ConfigError
    from evaclip.train import distributed as d

    seen: dict = {}
    monkeypatch.setattr(d.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(d.dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("EVACLIP_DIST_TIMEOUT_S", "90")
    d.init_distributed(backend="gloo")
    assert seen["timeout"] == timedelta(seconds=90) and seen["backend"] == "gloo" and seen["rank"] == 1
    monkeypatch.setenv("EVACLIP_DIST_TIMEOUT_S", "-5")
    with pytest.raises(ConfigError, match="EVACLIP_DIST_TIMEOUT_S"):
        d.init_distributed(backend="gloo")


def test_exit_worker_flushes_and_keeps_the_exit_code(tmp_path) -> None:
    """A finished torchrun worker leaves with os._exit, yet nothing it printed or logged is lost."""
    import subprocess
    import sys
    code = ("import logging, sys\n"
            "from evaclip.train.distributed import exit_worker\n"
            f"logging.basicConfig(filename={str(tmp_path / 'log.txt')!r}, level=logging.INFO)\n"
            "logging.getLogger('w').info('logged line')\n"
            "sys.stdout.write('printed line')\n"
            "exit_worker(3)\n"
            "print('never')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "printed line"
    assert "logged line" in (tmp_path / "log.txt").read_text()
