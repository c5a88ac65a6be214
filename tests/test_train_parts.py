"""Muon options, schedules, EMA and tight SWA (the loaders have tests/test_loader.py)."""

import pytest
import torch

from stages.train.averaging import EMA, TightSWA
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
