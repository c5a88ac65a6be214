"""Muon options and its sharded update, the schedule helpers, EMA and tight SWA (CPU, a few seconds)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stages import distributed
from stages.train.averaging import EMA, TightSWA
from stages.train.config import TrainConfig
from stages.train.muon import COEFFICIENTS, POLAR_EXPRESS_COEFFS, Muon, newton_schulz
from stages.train.schedule import (lr_multiplier, momentum_warmup, muon_momentum, progress, time_fraction,
                                   warmdown_multiplier)

SHAPES = [(64, 32), (32, 64)]


# ---- Newton-Schulz ----

def singular_values(name: str, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    out = newton_schulz(torch.randn(*shape), 5, torch.float32, COEFFICIENTS[name])
    assert out.shape == shape
    return torch.linalg.svdvals(out)


@pytest.mark.parametrize("shape", SHAPES)
def test_stock_newton_schulz_is_roughly_orthogonal(shape):
    # The stock quintic trades accuracy for speed: its fixed points spread over about (0.68, 1.13).
    sv = singular_values("stock", shape)
    assert sv.min() > 0.5 and sv.max() < 1.5


@pytest.mark.parametrize("shape", SHAPES)
def test_polar_express_is_tighter_after_five_steps(shape):
    sv = singular_values("polar_express", shape)
    assert sv.min() > 0.8 and sv.max() < 1.2
    stock = singular_values("stock", shape)
    assert (sv - 1).abs().max() < (stock - 1).abs().max()


def test_transposed_input_gives_transposed_output():
    torch.manual_seed(3)
    g = torch.randn(48, 16)
    for coeffs in COEFFICIENTS.values():
        tall = newton_schulz(g, 5, torch.float32, coeffs)
        wide = newton_schulz(g.T.contiguous(), 5, torch.float32, coeffs)
        assert torch.allclose(tall, wide.T, atol=1e-5)


def polar_express_step(s: float, a: float, b: float, c: float) -> float:
    return a * s + b * s ** 3 + c * s ** 5


def polar_express_update(grad: torch.Tensor, steps: int) -> torch.Tensor:
    """The update Muon applies at lr 1, momentum 0, no Nesterov: the orthogonalized gradient."""
    param = torch.nn.Parameter(torch.zeros_like(grad))
    param.grad = grad.clone()
    Muon([param], lr=1.0, momentum=0.0, nesterov=False, ns_steps=steps, coefficients="polar_express",
         ns_dtype=torch.float64).step()
    return -param.detach()


def test_polar_express_starts_from_the_frobenius_normalized_matrix():
    # diag(3, 4) has Frobenius norm 5: the top record divides by it (plus eps 1e-7) and by nothing
    # else, so the singular values enter the first step as 0.6 and 0.8 (1.02 * 5 would give 0.59, 0.78).
    update = polar_express_update(torch.diag(torch.tensor([3.0, 4.0], dtype=torch.float64)), steps=1)
    first = POLAR_EXPRESS_COEFFS[0]
    expected = torch.diag(torch.tensor([polar_express_step(0.6, *first), polar_express_step(0.8, *first)],
                                       dtype=torch.float64))
    assert torch.allclose(update, expected, rtol=0, atol=1e-6)


def test_polar_express_five_steps_match_the_record_procedure():
    # X / (||X||_F + 1e-7), then one (a, b, c) per step on the wide orientation, as the record does.
    torch.manual_seed(5)
    g = torch.randn(24, 40, dtype=torch.float64)
    x = g / (g.norm() + 1e-7)
    for a, b, c in POLAR_EXPRESS_COEFFS:
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    assert torch.allclose(polar_express_update(g, steps=5), x, rtol=0, atol=1e-12)


# ---- the old Muon, written out independently, to pin the defaults bit for bit ----

def old_zeropower(g: torch.Tensor, steps: int) -> torch.Tensor:
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(torch.float32)
    x = x / (x.norm() + 1e-7)
    if g.size(0) > g.size(1):
        x = x.T
    for _ in range(steps):
        A = x @ x.T
        B = b * A + c * A @ A
        x = a * x + B @ x
    if g.size(0) > g.size(1):
        x = x.T
    return x.to(g.dtype)


def old_muon_steps(weights, grads_per_step, lr, momentum, nesterov):
    weights = [w.clone() for w in weights]
    bufs = [torch.zeros_like(w) for w in weights]
    for grads in grads_per_step:
        for w, buf, g in zip(weights, bufs, grads):
            buf.mul_(momentum).add_(g)
            direction = g.add(buf, alpha=momentum) if nesterov else buf
            update = old_zeropower(direction, 5)
            update *= max(1, w.size(0) / w.size(1)) ** 0.5
            w.add_(update, alpha=-lr)
    return weights


def random_problem(seed: int, shapes=((24, 8), (8, 24), (16, 16)), steps: int = 3):
    """Initial weights and per-step gradients for a few matrices of mixed orientation."""
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(*s, generator=gen) for s in shapes]
    grads = [[torch.randn(*s, generator=gen) for s in shapes] for _ in range(steps)]
    return weights, grads


def stepped_muon(weights, grads_per_step, reduce: bool = False, **options):
    """Muon over fresh copies of ``weights`` fed these gradients (reduce-scattered first when
    ``reduce``): the parameters after the steps and the optimizer."""
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    opt = Muon(params, **options)
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        if reduce:
            opt.reduce_gradients()
        opt.step()
    return params, opt


def muon_steps(weights, grads_per_step, **options):
    return [p.detach() for p in stepped_muon(weights, grads_per_step, **options)[0]]


@pytest.mark.parametrize("nesterov", [True, False])
def test_default_options_reproduce_the_old_muon_bit_for_bit(nesterov):
    weights, grads = random_problem(0)
    new = muon_steps(weights, grads, lr=0.04, momentum=0.95, nesterov=nesterov)
    old = old_muon_steps(weights, grads, lr=0.04, momentum=0.95, nesterov=nesterov)
    assert all(torch.equal(a, b) for a, b in zip(new, old))


def test_unknown_coefficients_are_refused():
    with pytest.raises(ValueError, match="polar_express"):
        Muon([torch.nn.Parameter(torch.zeros(2, 2))], lr=0.1, momentum=0.9, coefficients="cubic")


# ---- MuonEq-R and weight decay ----

def one_step(weight: torch.Tensor, grad: torch.Tensor, **options) -> torch.Tensor:
    return muon_steps([weight], [[grad]], lr=0.1, momentum=0.9, **options)[0]


def test_row_normalize_matters_only_when_row_norms_differ():
    torch.manual_seed(4)
    w = torch.randn(16, 8)
    equal_rows = 3 * torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    # Equal row norms: normalizing rows is a global rescale, which Newton-Schulz undoes.
    assert torch.allclose(one_step(w, equal_rows, row_normalize=True), one_step(w, equal_rows), atol=1e-5)
    uneven_rows = equal_rows * torch.linspace(0.1, 10, 16)[:, None]
    diff = one_step(w, uneven_rows, row_normalize=True) - one_step(w, uneven_rows)
    assert diff.abs().max() > 1e-2


def test_weight_decay_with_zero_gradient_shrinks_by_exactly_one_minus_lr_wd():
    torch.manual_seed(5)
    w = torch.randn(8, 4)
    out = one_step(w, torch.zeros(8, 4), weight_decay=0.5)
    assert torch.equal(out, w * (1 - 0.1 * 0.5))


def test_weight_decay_is_applied_before_the_update():
    # The update depends only on the gradient, so decaying first equals stepping the pre-shrunk weight.
    torch.manual_seed(6)
    w, g = torch.randn(8, 4), torch.randn(8, 4)
    assert torch.equal(one_step(w, g, weight_decay=0.5), one_step(w * (1 - 0.1 * 0.5), g))


# ---- batched by shape, sharded over two gloo processes ----

# Three shapes, stacks of 3, 1 and 2: on two ranks rank 0 owns 2 + 1 + 1 matrices, rank 1 owns 1 + 0 + 1.
STACKED_SHAPES = ((24, 8), (8, 24), (24, 8), (16, 16), (24, 8), (16, 16))


@pytest.mark.parametrize("nesterov", [True, False])
def test_batched_stacks_equal_the_per_matrix_muon(nesterov):
    weights, grads = random_problem(8, STACKED_SHAPES)
    new = muon_steps(weights, grads, lr=0.04, momentum=0.95, nesterov=nesterov)
    old = old_muon_steps(weights, grads, lr=0.04, momentum=0.95, nesterov=nesterov)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=0) for a, b in zip(new, old))


def test_a_stack_orthogonalizes_each_matrix_on_its_own():
    stack = torch.randn(3, 16, 8, generator=torch.Generator().manual_seed(9))
    batched = newton_schulz(stack, 5, torch.float32, POLAR_EXPRESS_COEFFS)
    alone = torch.stack([newton_schulz(m, 5, torch.float32, POLAR_EXPRESS_COEFFS) for m in stack])
    assert torch.allclose(batched, alone, atol=1e-6, rtol=0)


SHARDED_OPTIONS = dict(lr=0.05, momentum=0.9, coefficients="polar_express", row_normalize=True, weight_decay=0.1)


def rank_gradients(grads_per_step, rank: int):
    """Rank ``rank``'s own gradients: the mean over ranks 0 and 1 is the single process's."""
    sign = 1 if rank == 0 else -1
    return [[g + sign * 0.5 * torch.ones_like(g) for g in grads] for grads in grads_per_step]


def sharded_worker(rank: int, world: int, store_path: str, out_path: str, native: bool) -> None:
    """One rank: identical weights, its own gradients reduce-scattered, sharded Muon steps; save the
    weights, the matrices it orthogonalized and its gathered momentum. ``native``: the NCCL path
    (reduce_scatter / all_gather of single tensors), which this torch's gloo also runs."""
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    distributed.tensor_collectives = lambda: native  # this spawned process only
    calls = []
    orthogonalize = Muon._orthogonalize

    def counted(self, direction, group):
        calls.append(direction.size(0))  # count the matrices: each rank should do only its share
        return orthogonalize(self, direction, group)

    Muon._orthogonalize = counted  # this spawned process only
    try:
        weights, grads = random_problem(7, STACKED_SHAPES)
        params, opt = stepped_muon(weights, rank_gradients(grads, rank), reduce=True, **SHARDED_OPTIONS)
        opt.gather_momentum()
        momentum = [opt.state[p]["momentum_buffer"] for p in params]
        torch.save(([p.detach() for p in params], sum(calls), momentum), f"{out_path}.{rank}")
        # Both ranks done before either tears gloo down: a rank that leaves while the other is still
        # in a collective aborts it ("terminate called without an active exception", SIGABRT).
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("native", [False, True], ids=["gloo_fallback", "reduce_scatter"])
def test_sharded_muon_on_two_ranks_matches_one_process(tmp_path, native):
    if native and not hasattr(dist, "reduce_scatter_single"):
        pytest.skip("this torch's gloo may lack reduce_scatter_tensor")
    world = 2
    mp.spawn(sharded_worker, args=(world, str(tmp_path / "store"), str(tmp_path / "params"), native), nprocs=world)
    per_rank, calls, momenta = zip(*[torch.load(tmp_path / f"params.{r}") for r in range(world)])
    assert calls == (4 * 3, 2 * 3)  # 3 steps; rank 0 owns 2 + 1 + 1 matrices, rank 1 owns 1 + 0 + 1
    assert all(torch.equal(a, b) for a, b in zip(*per_rank))  # every rank applied identical updates
    assert all(torch.equal(a, b) for a, b in zip(*momenta))  # gathered: every rank holds all momentum
    params, opt = stepped_muon(*random_problem(7, STACKED_SHAPES), **SHARDED_OPTIONS)
    # Same maths in another process; allow for BLAS thread-count differences in float32.
    assert all(torch.allclose(a, b.detach(), atol=1e-5, rtol=0) for a, b in zip(per_rank[0], params))
    assert all(torch.allclose(a, opt.state[p]["momentum_buffer"], atol=1e-5, rtol=0)
               for a, p in zip(momenta[0], params))


# ---- schedules ----

def test_time_fraction_keeps_the_gptq_reserve_and_clamps():
    assert time_fraction(298, 600, 4) == pytest.approx(0.5)
    assert time_fraction(596, 600, 4) == 1.0  # training ends 4 s early
    assert time_fraction(700, 600, 4) == 1.0 and time_fraction(-1, 600) == 0.0
    assert time_fraction(1, 5, 5) == 1.0  # no usable time at all


def test_warmdown_multiplier_flat_then_linear_to_zero():
    assert warmdown_multiplier(0.2, 0.72) == 1.0
    assert warmdown_multiplier(0.28, 0.72) == pytest.approx(1.0)
    assert warmdown_multiplier(0.64, 0.72) == pytest.approx(0.5)
    assert warmdown_multiplier(1.0, 0.72) == 0.0
    assert warmdown_multiplier(0.99, 0.0) == 1.0  # no warm-down


def test_the_floor_cuts_the_line_off_instead_of_bending_it():
    # The records' rule, max((1 - frac) / warmdown_frac, min_lr): above the floor the line is the
    # floorless one (a floor blended in would give 0.55 at the midpoint), below it the floor holds.
    assert warmdown_multiplier(0.64, 0.72, 0.1) == pytest.approx(0.5)
    assert warmdown_multiplier(0.5, 0.5, 0.1) == pytest.approx(1.0)
    assert warmdown_multiplier(0.925, 0.5, 0.1) == pytest.approx(0.15)
    assert warmdown_multiplier(0.96, 0.5, 0.1) == pytest.approx(0.1)  # the line is at 0.08
    assert warmdown_multiplier(1.0, 0.5, 0.1) == pytest.approx(0.1)
    top = TrainConfig(warmdown_frac=0.85, min_lr=0.1)
    assert lr_multiplier(top, 0.575) == pytest.approx(0.5)  # (1 - 0.575) / 0.85
    assert lr_multiplier(top, 0.95) == pytest.approx(0.1)  # the line: 0.0588


def test_warmdown_in_steps_follows_the_projected_run_length():
    # Seed 003: warm-down over the last 3500 steps of a run whose length is projected from the
    # steps so far; 1000 steps in 10% of the time projects 10,000 steps, so the share is 0.35.
    wd = TrainConfig(warmdown_steps=3500, warmdown_frac=0.0, max_steps=20_000, schedule="time")
    assert lr_multiplier(wd, 0.1, 1000) == 1.0
    assert lr_multiplier(wd, 0.8, 8000) == pytest.approx(0.2 / 0.35)  # 2000 of 3500 steps left
    assert lr_multiplier(wd, 0.64, 6400) == 1.0  # the warm-down starts at 65%
    # The seed's own formula: remaining time / (3500 * mean step time).
    elapsed, step, usable = 480.0, 5600, 600.0
    seed_003 = (usable - elapsed) / (3500 * elapsed / step)
    assert lr_multiplier(wd, elapsed / usable, step) == pytest.approx(seed_003)
    # Counted in steps, it is the last 3500 of max_steps exactly, from the first step on.
    steps = TrainConfig(warmdown_steps=3500, max_steps=7000, schedule="steps")
    assert lr_multiplier(steps, 0.0, 0) == 1.0
    assert lr_multiplier(steps, 6000 / 7000, 6000) == pytest.approx(1000 / 3500)


def test_momentum_warmup():
    assert momentum_warmup(0, 0.92, 0.99, 1500) == pytest.approx(0.92)
    assert momentum_warmup(750, 0.92, 0.99, 1500) == pytest.approx(0.955)
    assert momentum_warmup(5000, 0.92, 0.99, 1500) == 0.99
    assert momentum_warmup(3, 0.92, 0.99, 0) == 0.99


def old_lr_multiplier(warmdown_frac: float, frac: float) -> float:
    """The schedule before MIN_LR existed: linear to 0 over the last warmdown_frac."""
    if warmdown_frac <= 0 or frac < 1 - warmdown_frac:
        return 1.0
    return max(0.0, (1.0 - frac) / warmdown_frac)


FRACS = [i / 40 for i in range(41)]


def test_config_functions_delegate_to_the_explicit_ones():
    cfg = TrainConfig(warmdown_frac=0.72, min_lr=0.1, muon_momentum_start=0.92, muon_momentum=0.99,
                      muon_momentum_warmup_steps=1500)
    assert all(lr_multiplier(cfg, f) == warmdown_multiplier(f, 0.72, 0.1) for f in FRACS)
    assert all(muon_momentum(cfg, s) == momentum_warmup(s, 0.92, 0.99, 1500) for s in range(0, 3000, 97))
    no_floor = TrainConfig(warmdown_frac=0.3)
    assert all(lr_multiplier(no_floor, f) == pytest.approx(old_lr_multiplier(0.3, f)) for f in FRACS)
    # With a floor it is the floorless schedule held at the floor, nothing else.
    assert all(lr_multiplier(cfg, f) == pytest.approx(max(old_lr_multiplier(0.72, f), 0.1)) for f in FRACS)


def test_progress_modes():
    cfg = dict(max_steps=1000, max_seconds=600.0, gptq_reserve_seconds=4.0)
    assert progress(TrainConfig(schedule="time", **cfg), 900, 298) == pytest.approx(0.5)
    assert progress(TrainConfig(schedule="steps", **cfg), 250, 596) == pytest.approx(0.25)
    assert progress(TrainConfig(schedule="auto", **cfg), 250, 298) == pytest.approx(0.5)
    # Without a reserve, "auto" is the old min(1, max(step / max_steps, elapsed / max_seconds)).
    auto = TrainConfig(schedule="auto", max_steps=1000, max_seconds=600.0)
    for step, elapsed in [(100, 30.0), (500, 30.0), (1200, 10.0), (10, 900.0)]:
        assert progress(auto, step, elapsed) == pytest.approx(min(1.0, max(step / 1000, elapsed / 600)))


# ---- EMA and tight SWA ----

def tiny_module() -> torch.nn.Module:
    """A linear layer and a batch norm: parameters, a float buffer and an integer buffer."""
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))


def set_all(module: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.fill_(value)


def test_ema_averages_parameters_and_float_buffers():
    model = tiny_module()
    set_all(model, 0.0)
    ema = EMA(model, 0.9)
    floating = {n for n, t in model.state_dict().items() if t.is_floating_point()}
    assert set(ema.state_dict()) == floating and "1.running_mean" in floating  # no num_batches_tracked
    for value in (1.0, 2.0):
        set_all(model, value)
        ema.update(model)
    expected = 0.9 * (0.9 * 0.0 + 0.1 * 1.0) + 0.1 * 2.0
    for tensor in ema.state_dict().values():
        assert tensor.dtype == torch.float32
        assert torch.allclose(tensor, torch.full_like(tensor, expected))


def test_ema_state_round_trip():
    model = tiny_module()
    ema = EMA(model, 0.99)
    set_all(model, 5.0)
    saved = ema.state_dict()
    restored = EMA(model, 0.99)  # starts from the 5.0 weights
    restored.load_state_dict(saved)
    assert all(torch.equal(restored.state_dict()[name], tensor) for name, tensor in saved.items())


def test_tight_swa_collects_on_cadence_under_the_threshold():
    swa = TightSWA(every=50, lr_scale_threshold=0.2)
    collected = []
    for step in range(1, 401):
        scale = 1 - step / 400  # below 0.2 from step 321
        if swa.maybe_collect(step, scale, {"w": torch.full((2,), float(step))}):
            collected.append(step)
    assert collected == [350, 400] and swa.count == 2
    assert torch.allclose(swa.average()["w"], torch.full((2,), 375.0))


def test_tight_swa_never_due_above_the_threshold():
    swa = TightSWA(every=10, lr_scale_threshold=0.2)
    assert not any(swa.maybe_collect(step, 0.2, {"w": torch.ones(1)}) for step in range(0, 100, 10))
    assert swa.count == 0 and swa.average() == {}
