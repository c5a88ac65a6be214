"""Muon options, schedules, EMA / tight SWA and the train loaders."""

import numpy as np
import pytest
import torch

from stages.data.shards import encode_shard
from stages.train import loader as loader_module
from stages.train.averaging import EMA, TightSWA
from stages.train.loader import ContiguousLoader, ShuffledLoader, make_loader
from stages.train.muon import COEFFICIENTS, Muon, newton_schulz, normalize_rows
from stages.train.schedule import momentum_warmup, time_fraction, warmdown_multiplier


@pytest.mark.parametrize("name, tolerance", [("stock", 0.35), ("polar_express", 0.15)])
@pytest.mark.parametrize("shape", [(64, 32), (32, 64)])
def test_newton_schulz_orthogonalizes(name, tolerance, shape):
    torch.manual_seed(0)
    out = newton_schulz(torch.randn(*shape), 5, torch.float32, COEFFICIENTS[name])
    singular = torch.linalg.svdvals(out)
    assert out.shape == shape and (singular - 1).abs().max() < tolerance


def test_polar_express_is_tighter_than_stock():
    torch.manual_seed(1)
    g = torch.randn(96, 48)
    spread = {n: (torch.linalg.svdvals(newton_schulz(g, 5, torch.float32, c)) - 1).abs().max() for n, c in COEFFICIENTS.items()}
    assert spread["polar_express"] < spread["stock"]


def test_row_normalize_gives_unit_rows():
    x = torch.randn(8, 5) * torch.arange(1, 9)[:, None]
    assert torch.allclose(normalize_rows(x).norm(dim=1), torch.ones(8), atol=1e-5)


def reference_muon_step(p, grad, lr, momentum, buf):
    """The baseline's Muon written out once more, to pin the default options to it."""
    buf = momentum * buf + grad
    direction = grad + momentum * buf
    update = newton_schulz(direction, 5, torch.float32)
    return p - lr * update * max(1, p.size(0) / p.size(1)) ** 0.5, buf


def test_default_muon_matches_the_baseline():
    torch.manual_seed(2)
    p = torch.nn.Parameter(torch.randn(16, 8))
    expected, buf = p.detach().clone(), torch.zeros(16, 8)
    opt = Muon([p], lr=0.04, momentum=0.95)
    for _ in range(3):
        grad = torch.randn(16, 8)
        p.grad = grad.clone()
        opt.step()
        expected, buf = reference_muon_step(expected, grad, 0.04, 0.95, buf)
    assert torch.allclose(p.detach(), expected, atol=1e-6, rtol=0)


def test_weight_decay_is_decoupled():
    p = torch.nn.Parameter(torch.ones(4, 4))
    p.grad = torch.zeros(4, 4)
    Muon([p], lr=0.1, momentum=0.9, weight_decay=0.5).step()
    assert torch.allclose(p.detach(), torch.full((4, 4), 1 - 0.1 * 0.5))


def test_schedule_functions():
    assert time_fraction(298, 600, 4) == pytest.approx(0.5)
    assert time_fraction(700, 600) == 1.0
    assert warmdown_multiplier(0.2, 0.72) == 1.0
    assert warmdown_multiplier(1.0, 0.72, 0.1) == pytest.approx(0.1)
    assert warmdown_multiplier(1 - 0.36, 0.72, 0.0) == pytest.approx(0.5)
    assert momentum_warmup(750, 0.92, 0.99, 1500) == pytest.approx(0.955)
    assert momentum_warmup(5000, 0.92, 0.99, 1500) == 0.99


def test_ema_and_tight_swa():
    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, 0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert torch.allclose(ema.state_dict()["weight"], torch.full((2, 2), 0.1))
    swa = TightSWA(every=2, lr_scale=0.2)
    assert not swa.maybe_collect(2, 0.5, {"w": torch.ones(1)})  # LR still high
    assert not swa.maybe_collect(3, 0.1, {"w": torch.ones(1)})  # off cadence
    assert swa.maybe_collect(4, 0.1, {"w": torch.ones(1)})
    assert swa.maybe_collect(6, 0.05, {"w": torch.full((1,), 3.0)})
    assert swa.count == 2 and swa.average()["w"].item() == pytest.approx(2.0)


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for index, size in enumerate([3000, 1200, 5000]):
        path = tmp_path / f"fineweb_train_{index:06d}.bin"
        path.write_bytes(encode_shard((rng.integers(0, 60000, size) + index).astype(np.uint16)))
        paths.append(path)
    val = tmp_path / "fineweb_val_000000.bin"
    val.write_bytes(encode_shard(np.full(500, 7, dtype=np.uint16)))
    return paths


def test_inputs_and_targets_shift_by_one(shards):
    for loader in (ContiguousLoader(shards), ShuffledLoader(shards, seed=3)):
        x, y = loader.next_batch(256, 64, "cpu")
        assert x.shape == (4, 64) and torch.equal(x[:, 1:], y[:, :-1])


def test_contiguous_resume(shards):
    loader = ContiguousLoader(shards)
    for _ in range(5):
        loader.next_batch(512, 64, "cpu")
    resumed = ContiguousLoader(shards)
    resumed.load_state_dict(loader.state_dict())
    for _ in range(12):  # crosses shard ends and wraps around
        assert torch.equal(loader.next_batch(512, 64, "cpu")[0], resumed.next_batch(512, 64, "cpu")[0])


def test_shuffled_is_seeded_and_resumable(shards):
    a, b, c = ShuffledLoader(shards, seed=1), ShuffledLoader(shards, seed=1), ShuffledLoader(shards, seed=2)
    assert torch.equal(a.next_batch(256, 64, "cpu")[0], b.next_batch(256, 64, "cpu")[0])
    assert not torch.equal(a.next_batch(256, 64, "cpu")[0], c.next_batch(256, 64, "cpu")[0])
    resumed = ShuffledLoader(shards, seed=1)
    resumed.load_state_dict(a.state_dict())
    assert torch.equal(a.next_batch(256, 64, "cpu")[0], resumed.next_batch(256, 64, "cpu")[0])


def test_shuffled_windows_never_straddle_shards(shards):
    loader = ShuffledLoader(shards, seed=5)
    contents = [set(np.asarray(loader_module.read_shard(p)).tolist()) for p in shards]
    for _ in range(5):
        x, y = loader.next_batch(1024, 64, "cpu")
        for row in torch.cat([x, y[:, -1:]], dim=1).tolist():
            assert any(set(row) <= c for c in contents)


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_global_batch_is_the_same_for_any_world_size(shards, world):
    seq, global_rows, accum = 32, 16, 2
    single = ShuffledLoader(shards, seed=9, grad_accum=1)
    x_single = single.next_batch(global_rows * seq, seq, "cpu")[0]
    rows = []
    for rank in range(world):
        loader = ShuffledLoader(shards, rank=rank, world_size=world, seed=9, grad_accum=accum)
        for _ in range(accum):
            rows.append(loader.next_batch(global_rows * seq // (world * accum), seq, "cpu")[0])
    assert torch.equal(torch.cat(rows), x_single)


def test_loaders_open_only_the_paths_given(shards, monkeypatch):
    opened = []
    real = loader_module.read_shard
    monkeypatch.setattr(loader_module, "read_shard", lambda p: opened.append(p.name) or real(p))
    for mode in ("contiguous", "shuffled"):
        loader = make_loader(mode, shards, 0, 1, 0)
        for _ in range(30):
            loader.next_batch(512, 64, "cpu")
    assert opened and all("val" not in name for name in opened)
