"""The training step as the records run it, proven on CPU: bucketed gradient reduction, sharded
Muon with a global clip, the loss on the device with a non-finite check every rank takes together,
foreach EMA, the records' bf16-embedding precision and a resume onto another device."""

import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stages.config import apply_overrides
from stages.contract.stage_dir import StageDir
from stages.distributed import buckets, start_mean
from stages.errors import GolfError
from stages.model.gpt import GPT
from stages.model.layers import Linear
from stages.train.averaging import EMA
from stages.train.checkpointing import data_identity, restore_checkpoint, save_checkpoint
from stages.data.loader import Batch
from stages.train.loop import RandomTokens, Trainer
from stages.train.optim import use_record_precision
from stages.train.presets import get_preset

from .conftest import tiny_run_config
from .test_roles import OLD_CONTROL_TENSOR_NAMES

CPU = torch.device("cpu")
WORLD = 2
# Spawned ranks that have not finished by then are hung in a collective: the test fails, not waits.
RANK_TIMEOUT_S = 120


def run_ranks(worker, tmp_path, *args) -> list:
    """Run ``worker(rank, store, out, *args)`` on two gloo processes; return what each saved."""
    context = mp.spawn(worker, args=(str(tmp_path / "store"), str(tmp_path / "out"), *args), nprocs=WORLD,
                       join=False)
    deadline = time.monotonic() + RANK_TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the ranks did not finish in {RANK_TIMEOUT_S} s (hung in a collective)")
    return [torch.load(tmp_path / f"out.{rank}") for rank in range(WORLD)]


def join_group(rank: int, store_path: str) -> None:
    dist.init_process_group("gloo", store=dist.FileStore(store_path, WORLD), rank=rank, world_size=WORLD)


def leave_group() -> None:
    # Both ranks done before either tears gloo down: a rank that leaves while the other is still
    # in a collective aborts it (SIGABRT).
    dist.barrier()
    dist.destroy_process_group()


# ---- bucketed gradient reduction ----

def mixed_tensors(seed: int) -> list[torch.Tensor]:
    """Gradients of mixed sizes and dtypes (as on CUDA: bf16 embeddings among float32 weights)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(300,), (17, 9), (1000,), (5,), (64, 64), (3, 3)]
    dtypes = [torch.float32, torch.float32, torch.bfloat16, torch.float64, torch.float32, torch.bfloat16]
    return [torch.randn(*s, generator=gen).to(d) for s, d in zip(shapes, dtypes)]


def test_buckets_keep_one_dtype_and_the_size_limit():
    tensors = mixed_tensors(0)
    runs = buckets(tensors, bucket_bytes=2048)
    assert sorted(id(t) for run in runs for t in run) == sorted(id(t) for t in tensors)
    for run in runs:
        assert len({t.dtype for t in run}) == 1
        assert len(run) == 1 or sum(t.numel() * t.element_size() for t in run) <= 2048
    assert len(runs) > len({t.dtype for t in tensors})  # the limit split some dtype's run


def bucket_worker(rank: int, store_path: str, out_path: str) -> None:
    join_group(rank, store_path)
    try:
        bucketed, plain = mixed_tensors(rank), mixed_tensors(rank)
        for work in start_mean(bucketed, bucket_bytes=2048):
            work.wait()
        for tensor in plain:  # the old way: one all-reduce per tensor
            dist.all_reduce(tensor)
            tensor /= WORLD
        torch.save((bucketed, plain), f"{out_path}.{rank}")
        leave_group()
    finally:
        dist.destroy_process_group() if dist.is_initialized() else None


def test_bucketed_mean_equals_one_all_reduce_per_tensor(tmp_path):
    results = run_ranks(bucket_worker, tmp_path)
    for bucketed, plain in results:
        assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(bucketed, plain))
    assert all(torch.equal(a, b) for a, b in zip(results[0][0], results[1][0]))


# ---- the whole step on two ranks: buckets, sharded Muon, global clip ----

class FixedBatches:
    """The same batches every run: ``order`` says which of each step's per-rank batches this
    loader hands out, so two ranks together see what one process with grad_accum=2 sees."""

    def __init__(self, vocab_size: int, order: list[int]):
        self.generator = torch.Generator().manual_seed(11)
        self.vocab_size, self.order, self.calls = vocab_size, order, 0

    def next_batch(self, local_tokens: int, row_tokens: int, device):
        step, slot = divmod(self.calls, len(self.order))
        gen = torch.Generator().manual_seed(1000 * step + self.order[slot])
        self.calls += 1
        rows = torch.randint(0, self.vocab_size, (local_tokens // row_tokens, row_tokens + 1), generator=gen)
        return Batch(rows[:, :-1].to(device), rows[:, 1:].to(device))

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = state["calls"]


def step_config(*extra: str):
    """top-cpu (Polar Express, MuonEq-R, EMA, looped layers) on short rows, clipped hard."""
    return apply_overrides(get_preset("top-cpu").config, [
        f"model.vocab_size={tiny_run_config().model.vocab_size}", "train.seq_len=32", "train.batch_tokens=256",
        "train.grad_clip=0.05", "train.compile=false", "train.loader=contiguous", "model.doc_mask=false",
        "model.loop_start_frac=0", *extra])


def trained_weights(config, order: list[int], steps: int) -> dict:
    torch.manual_seed(0)
    model = GPT(config.model)
    trainer = Trainer(model, config, FixedBatches(config.model.vocab_size, order), CPU)
    losses = [trainer.read_loss(trainer.train_step()) for _ in range(steps)]
    return {"weights": model.state_dict(), "losses": losses}


def step_worker(rank: int, store_path: str, out_path: str) -> None:
    join_group(rank, store_path)
    try:
        torch.save(trained_weights(step_config(), [rank], 3), f"{out_path}.{rank}")
        leave_group()
    finally:
        dist.destroy_process_group() if dist.is_initialized() else None


def test_two_ranks_step_like_one_process_with_accumulation(tmp_path):
    ranks = run_ranks(step_worker, tmp_path)
    one = trained_weights(step_config("train.grad_accum=2"), [0, 1], 3)
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in one["weights"])
    assert all(abs(a - b) < 1e-5 for a, b in zip(ranks[0]["losses"], one["losses"]))
    assert max((ranks[0]["weights"][k] - one["weights"][k]).abs().max().item() for k in one["weights"]) < 1e-5


# ---- the loss stays on the device; a non-finite one stops every rank ----

def test_the_step_returns_the_loss_as_a_device_tensor():
    config = step_config()
    trainer = Trainer(GPT(config.model), config, RandomTokens(config.model.vocab_size, 0), CPU)
    loss = trainer.train_step()
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and loss.device == CPU
    assert trainer.read_loss(loss) == float(loss) > 0


def nan_worker(rank: int, store_path: str, out_path: str) -> None:
    join_group(rank, store_path)
    try:
        config = step_config()
        trainer = Trainer(GPT(config.model), config, FixedBatches(config.model.vocab_size, [rank]), CPU)
        if rank == 1:  # only this rank's loss goes bad
            real = trainer.loss_fn
            trainer.loss_fn = lambda *args, **kwargs: real(*args, **kwargs) * float("nan")
        try:
            trainer.read_loss(trainer.train_step())
            outcome = "no error"
        except GolfError as exc:
            outcome = str(exc)
        torch.save(outcome, f"{out_path}.{rank}")
        leave_group()
    finally:
        dist.destroy_process_group() if dist.is_initialized() else None


def test_a_non_finite_loss_on_one_rank_stops_both(tmp_path):
    outcomes = run_ranks(nan_worker, tmp_path)
    assert all(o.startswith("train loss became nan at step 1") for o in outcomes), outcomes


# ---- EMA over lists ----

def old_ema_update(shadow: dict, model: torch.nn.Module, decay: float) -> None:
    """The per-tensor loop the foreach update replaced (the oracle)."""
    for name, tensor in model.state_dict().items():
        if name in shadow:
            shadow[name].lerp_(tensor.detach().float(), 1 - decay)


def test_foreach_ema_equals_the_per_tensor_loop():
    config = step_config()
    torch.manual_seed(3)
    model = use_record_precision(GPT(config.model))  # bf16 embeddings too: shadows stay float32
    ema = EMA(model, 0.99)
    oracle = {name: t.clone() for name, t in ema.shadow.items()}
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        old_ema_update(oracle, model, 0.99)
    assert all(ema.shadow[n].dtype == torch.float32 and torch.equal(ema.shadow[n], oracle[n]) for n in oracle)


# ---- precision ----

def records_bf16_names(model: GPT) -> set[str]:
    """The records' rule (the oracle): ``.bfloat16()``, then every CastedLinear and every 1-D or
    control tensor back to float32; the names of what stays bf16."""
    linear = {f"{m}.{n}" if m else n for m, module in model.named_modules() if isinstance(module, Linear)
              for n, _ in module.named_parameters(recurse=False)}
    return {name for name, p in model.named_parameters()
            if name not in linear and p.ndim >= 2 and not any(c in name for c in OLD_CONTROL_TENSOR_NAMES)}


@pytest.mark.parametrize("preset", ["tiny", "pr401-cpu", "top-cpu", "pr1790-cpu"])
def test_record_precision_leaves_bf16_exactly_what_the_records_do(preset):
    model = GPT(get_preset(preset).config.model)
    expected = records_bf16_names(model)
    use_record_precision(model)
    assert {n for n, p in model.named_parameters() if p.dtype == torch.bfloat16} == expected
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if n not in expected)


def test_bf16_embeddings_train_and_export_float32():
    config = step_config("train.ema_decay=0")
    torch.manual_seed(0)
    model = GPT(config.model)
    reference = model.loss(*RandomTokens(config.model.vocab_size, 5).next_batch(64, 32, CPU)[:2])
    use_record_precision(model)
    loss = model.loss(*RandomTokens(config.model.vocab_size, 5).next_batch(64, 32, CPU)[:2])
    assert abs(loss.item() - reference.item()) < 2e-2 * reference.item()
    trainer = Trainer(model, config, RandomTokens(config.model.vocab_size, 0), CPU)
    trainer.read_loss(trainer.train_step())
    assert model.tok_emb.weight.dtype == torch.bfloat16
    exported, kind = trainer.export_state()
    assert kind == "raw" and all(t.dtype == torch.float32 for t in exported.values())


# ---- resume onto another device ----

def checkpointed_trainer(config, device: torch.device) -> Trainer:
    torch.manual_seed(0)
    model = GPT(config.model).to(device)
    if device.type == "meta":  # the precision a CUDA run trains in (Trainer applies it on cuda only)
        use_record_precision(model)
    return Trainer(model, config, FixedBatches(config.model.vocab_size, [0]), device)


def test_resume_puts_every_state_on_the_models_device_and_dtype(data_dir, tmp_path):
    """A checkpoint is read to the CPU; a run on another device (here "meta" stands in for cuda,
    with the bf16 embeddings of the CUDA precision) must get every state on its own device."""
    config = step_config("train.swa_every=1", "train.swa_lr_scale=1.0", "train.max_steps=4",
                         "train.schedule=steps", "train.warmdown_frac=1.0")
    data = StageDir(data_dir, "tokenize")
    saved = checkpointed_trainer(config, CPU)
    for _ in range(2):
        saved.read_loss(saved.train_step())
    assert saved.swa.count > 0 and saved.ema is not None
    folder = save_checkpoint(saved, tmp_path / "checkpoints", data_identity(data), {}, "run")
    meta = torch.device("meta")
    resumed = checkpointed_trainer(config, meta)
    dtypes = {name: p.dtype for name, p in resumed.model.named_parameters()}
    restore_checkpoint(resumed, folder, data)
    assert {name: p.dtype for name, p in resumed.model.named_parameters()} == dtypes
    assert all(p.device == meta for p in resumed.model.parameters())
    for optimizer in resumed.optimizers:
        for param, state in optimizer.state.items():
            for key, value in state.items():
                if torch.is_tensor(value) and key != "step":
                    assert value.device == meta and value.dtype == param.dtype, key
    assert len(resumed.muon.state) == len(resumed.muon.param_groups[0]["params"])
    for average in (resumed.ema.shadow, resumed.swa.mean):
        assert average and all(t.device == meta and t.dtype == torch.float32 for t in average.values())
    assert resumed.step == 2 and resumed.swa.count == saved.swa.count


# ---- a checkpoint written on two ranks resumes them exactly ----

def resume_worker(rank: int, store_path: str, out_path: str, data_dir: str, folder: str) -> None:
    """Four steps straight, and two steps + a checkpoint (momentum gathered from every rank first,
    rank 0 writes) + two steps in fresh trainers restored from it: the same weights."""
    join_group(rank, store_path)
    try:
        config, data = step_config(), StageDir(data_dir, "tokenize")

        def fresh() -> Trainer:
            torch.manual_seed(0)
            return Trainer(GPT(config.model), config, FixedBatches(config.model.vocab_size, [rank]), CPU)

        straight = fresh()
        for _ in range(4):
            straight.train_step()
        first = fresh()
        for _ in range(2):
            first.train_step()
        first.gather_state()
        if rank == 0:
            save_checkpoint(first, Path(folder), data_identity(data), {}, "run")
        dist.barrier()
        resumed = fresh()
        restore_checkpoint(resumed, Path(folder) / "step_000002", data)
        for _ in range(2):
            resumed.train_step()
        torch.save((straight.model.state_dict(), resumed.model.state_dict()), f"{out_path}.{rank}")
        leave_group()
    finally:
        dist.destroy_process_group() if dist.is_initialized() else None


def test_a_two_rank_checkpoint_resumes_exactly(data_dir, tmp_path):
    for straight, resumed in run_ranks(resume_worker, tmp_path, str(data_dir), str(tmp_path / "checkpoints")):
        assert all(torch.equal(straight[k], resumed[k]) for k in straight)
