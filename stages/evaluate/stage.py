"""`golf eval`: score a packed artifact on the val split, running the code the artifact ships.

Reads only the artifact, the val shards and the tokenizer. The artifact is read and checked
(``stages/artifact``: its format, the integrity of its code, and whether that code is the very
bundle this golf ships; foreign code runs only with ``trust_code``), the shipped code is imported
from the artifact's own bytes, the model is rebuilt from the shipped weights, and every second of
it counts toward the evaluation budget. The manifest records the code check.

With ``ttt.mode`` other than 'none' the shipped test-time training (``evaluate/ttt``) scores:
its warm-up runs first on random tokens only, then each chunk is scored, then adapted on, and the
ledger keeps warm-up, scoring, adaptation and any global SGD phase apart. ``budget.py`` holds the
evaluation budget: every counted second from the stage start (the conservative reading; the
records timed only their loop), and past it adaptation stops (or the stage fails).
``--token-nll`` saves one receipt per scored target, from which anyone can recompute val_bpb.

Under torchrun (`golf eval --nproc N`) every rank reads and checks the artifact and scores its
share of the windows; the sums are added up in float64 and the receipts gathered on rank 0, which
alone writes the stage folder and the receipts file and prints the result.
"""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial, reduce
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save as save_safetensors

from ..artifact.verify import Artifact, load_runtime, load_ttt, read_artifact, vouch_for_code
from ..config import to_dict
from ..contract.hashing import sha256_bytes
from ..contract.ledger import TimeLedger
from ..contract.lineage import lineage_folder, require_same_tokenizer
from ..contract.manifest import MANIFEST_NAME
from ..contract.output_path import OutputKind, check_output_path
from ..contract.stage_dir import StageDir, StageWriter, atomic_write_bytes
from ..device import allocation_failures, resolve_device
from ..distributed import DistContext, init_distributed, shutdown
from ..errors import GolfError
from ..progress import Reporter, silent_reporter
from ..scoring.setup import ScoringSetup
from ..scoring.val_data import ValData, load_val
from ..scoring.validate import scoring_setup, validate
from ..scoring.windows import usable_targets
from .budget import EvalBudget
from .config import EvalConfig
from .ttt.config import TTTConfig
# What each TTT mode declares (its windows, comparison, notes, batch fit) is read from golf's own copy
# of ttt/, not the artifact's: the stage needs it before the artifact is read (memory messages) and
# without TTT code (--no-ttt artifacts score 'none'), golf runs shipped code only when it is this very
# code (or trusted), and the manifest's bookkeeping stays golf's word. Scoring, warm-up and batch fit
# run from the artifact's bytes (``score_with_ttt`` ... look the mode up in the shipped registry).
from .ttt.mode import REGISTRY, mode_named

IN_MEMORY_TOLERANCE = 1e-6
FOREIGN_DATA_FLAG = "--foreign-data"
# Why each ledger bucket the stage opens around every mode counts toward the evaluation budget; the
# TTT modes declare their own buckets' notes (``TTTMode.notes``: batch_fit, global_sgd). The shipped
# TTT code names its phases (``run.timed(name)``); a name a key begins (global_sgd_2) takes its note.
PHASE_NOTES = {
    "warmup": "the TTT mode's warm-up (or, compiled, the scoring forward's) on random tokens (no val data) "
              "before scoring, compiling included: counted here, not by the records (docs/TTT_CASEOPS.md section E)",
    "score": "scoring every val target once (no_grad)",
    "adapt": "test-time training on targets already scored",
}
OTHER_PHASE_NOTE = "a phase of the shipped test-time training, on targets already scored"
SCORED_PASS_PHASES = ("score", "adapt")  # listed in every TTT ledger, in order, even at 0 s


def open_artifact(path: str | Path) -> tuple[Path, StageDir | None]:
    """Accept a pack folder or an artifact file; return the file and its pack folder if it has one."""
    path = Path(path)
    if path.is_dir():
        pack = StageDir(path, "pack")
        return pack.file("artifact"), pack
    if not path.is_file():
        raise GolfError(f"{path}: no such artifact")
    if (path.parent / MANIFEST_NAME).is_file():
        pack = StageDir(path.parent, "pack")
        if pack.resolve(pack.manifest.outputs["artifact"]) == path.resolve():
            return pack.file("artifact"), pack
    return path, None


def build_model(runtime, artifact: Artifact):
    """The artifact's model, rebuilt by its own runtime; weights that do not decode are one line."""
    try:
        return runtime.build_model(artifact.header, artifact.sections)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GolfError(f"{artifact.path}: the model does not rebuild from the artifact ({message})") from None


def check_eval_inputs(artifact: str | Path, data_dir: str | Path | None, out_dir: str | Path, force: bool,
                      token_nll: str | Path | None) -> tuple[Path, StageDir | None, StageDir, dict]:
    """The checks that need no reading of the artifact: run by the torchrun launcher before it starts
    the ranks, and by every rank before any waits on another. Returns the artifact file, its pack
    folder (if any), the data folder and what the eval reads (the outputs' ``inputs``)."""
    artifact_path, pack = open_artifact(artifact)
    data = _data_dir(data_dir, pack)
    inputs = {"the artifact": artifact_path, "its pack folder": pack.path if pack else None,
              "the data folder": data.path}
    if token_nll is not None:
        _check_receipts_path(Path(token_nll), force, {**inputs, "the eval's output folder": out_dir})
    check_output_path(out_dir, "eval", force, inputs)
    return artifact_path, pack, data, inputs


def run_eval(config: EvalConfig, artifact: str | Path, data_dir: str | Path | None, out_dir: str | Path,
             force: bool = False, reporter: Reporter | None = None, trust_code: bool = False,
             token_nll: str | Path | None = None, foreign_data: bool = False):
    """Score the artifact; ``trust_code`` runs its code even when it is not the code this golf ships;
    ``token_nll`` saves the per-target receipts there (safetensors); ``foreign_data`` scores a
    ``data_dir`` other than the artifact's lineage's (marked foreign). Under torchrun every rank
    scores its share; rank 0 writes and returns the manifest, the other ranks return None."""
    artifact_path, pack, data, inputs = check_eval_inputs(artifact, data_dir, out_dir, force, token_nll)
    with allocation_failures(memory_sizing(config)), \
            _rank_stage(config.device, out_dir, force, reporter or Reporter(), inputs) as (ctx, writer, reporter):
        ledger = writer.ledger
        budget = EvalBudget(config.budget_s, config.over_budget, ledger, on_stop=partial(_say_stopped, reporter, config))
        shipped = _load(artifact_path, config, trust_code, ledger, reporter)
        require_same_tokenizer(shipped.artifact.header["lineage"], f"artifact {artifact_path}", data.lineage,
                               f"data {data.path}")
        data_source = _data_source(data, data_dir is not None, pack, foreign_data, reporter)
        val, setup, attention = _prepare(config, shipped, data, ctx, ledger, reporter)
        config, fit = _before_scoring(config, shipped, val.table, setup, ledger)
        scored = _score(config, shipped, val, setup, budget, ledger, reporter, token_nll is not None)
        receipt_rows = _gather_receipts(shipped.runtime, scored.receipts, ctx)
        if not ctx.is_main:
            return None
        _record_artifact_input(writer, artifact_path, shipped.artifact.data, pack)
        writer.add_input("data", data)
        metrics = _metrics(config, shipped, val, setup, fit, scored, data_source, attention, pack)
        if scored.receipts is not None:
            metrics.update(_save_receipts(Path(token_nll), receipt_rows, scored.sums, writer.run_id))
        failure = _non_finite_failure(metrics) or _in_memory_failure(metrics)
        _log_result(reporter, ledger, config, scored, metrics, failure, out_dir)
        manifest = writer.commit(to_dict(config), dict(data.lineage), metrics, reporter.text(), failure=failure)
    if failure:
        raise GolfError(f"{failure}; the eval folder {out_dir} is kept and marked failed")
    return manifest


@dataclass(frozen=True)
class Shipped:
    """The artifact as the eval runs it: read and checked, its code vouched for and imported, its model rebuilt."""

    artifact: Artifact
    """The artifact file, parsed and checked (its header, its bytes)."""
    code_record: dict
    """The code check as the metrics record it (whether the code is golf's own, or trusted foreign code)."""
    runtime: ModuleType
    """The shipped runtime: the model builder, the byte table and the plain scorer."""
    ttt: ModuleType | None
    """The shipped test-time training (None with ttt.mode 'none')."""
    model: torch.nn.Module
    """The model rebuilt from the shipped weights by the shipped runtime."""


@dataclass(frozen=True)
class Scored:
    """What the scored pass (and the --compare-no-ttt diagnostic before it) leaves for the metrics."""

    sums: object
    """The score: the shipped ``BpbSums`` over every rank."""
    compared: dict
    """--compare-no-ttt: {'val_bpb_no_ttt': ...}; else empty."""
    facts: dict
    """What the TTT mode states about its pass (phased: its global phases)."""
    spent: dict
    """The budget's verdict (``EvalBudget.finish``)."""
    receipts: object | None
    """This rank's shipped ``TokenReceipts`` (--token-nll), else None."""


def _load(path: Path, config: EvalConfig, trust_code: bool, ledger: TimeLedger, reporter: Reporter) -> Shipped:
    """Read and check the artifact, vouch for its code (``trust_code``), import it and rebuild the model."""
    with ledger.measure("load_artifact", "eval", "read, decompress and dequantize the artifact"):
        artifact = read_artifact(path)
        code = vouch_for_code(artifact, trust_code, reporter)
        runtime = load_runtime(artifact)
        ttt = load_ttt(artifact) if mode_named(config.ttt.mode).adapts else None
        return Shipped(artifact, code.record(trust_code), runtime, ttt, build_model(runtime, artifact))


def _prepare(config: EvalConfig, shipped: Shipped, data: StageDir, ctx: DistContext, ledger: TimeLedger,
             reporter: Reporter) -> tuple[ValData, ScoringSetup, str]:
    """The val data, the scoring setup of this rank, and the attention backend pinned for scoring
    (the model moved to the device); logs the byte source, the attention and the compile switch."""
    seq_len, stride = _windows(config, shipped.artifact.header)
    with ledger.measure("load_val", "eval", "val shards and tokenizer"):
        val = load_val(data, shipped.artifact.header["model_config"]["vocab_size"], config.use_sidecar,
                       build_table=shipped.runtime.build_byte_table)
    val.check_window_fits(seq_len, "--seq-len" if config.seq_len else "the artifact's train_seq_len")
    log_byte_source(reporter, val)
    setup = scoring_setup(seq_len, stride, config.batch_windows, ctx.device, compile_backend(config, ctx.device))
    attention = _choose_attention(shipped.model.to(setup.device), setup)
    reporter.log(attention=attention)
    reporter.log(eval_compile=setup.compile_backend or "off")
    return val, setup, attention


def _windows(config: EvalConfig, header: dict) -> tuple[int, int]:
    """(seq_len, stride) of the scored windows: --seq-len, else the artifact's train_seq_len, held to
    the window rules (the stride and eval_tokens against it) now that it is known."""
    seq_len = config.seq_len or header["train_seq_len"]
    config.check_window(seq_len)
    return seq_len, config.stride or seq_len


def _before_scoring(config: EvalConfig, shipped: Shipped, table, setup: ScoringSetup,
                    ledger: TimeLedger) -> tuple[EvalConfig, dict]:
    """Document modes: fit the documents per batch to the device (the config then holds them; the
    facts go to the metrics). The TTT mode's warm-up, or a compiled scoring forward's, unless off."""
    if config.warmup and (mode_named(config.ttt.mode).adapts or setup.compile_backend is not None):
        with ledger.measure("warmup", "eval", PHASE_NOTES["warmup"]):
            config, fit = _fit_batch(shipped.ttt, shipped.model, setup, config)
            _warm_up(shipped.runtime, shipped.ttt, shipped.model, table, setup, config)
        return config, fit
    if mode_named(config.ttt.mode).fit_batch is not None:
        with ledger.measure("batch_fit", "eval", phase_note("batch_fit")):
            return _fit_batch(shipped.ttt, shipped.model, setup, config)
    return config, {}


def _score(config: EvalConfig, shipped: Shipped, val: ValData, setup: ScoringSetup, budget: EvalBudget,
           ledger: TimeLedger, reporter: Reporter, keep_receipts: bool) -> Scored:
    """The --compare-no-ttt diagnostic (if asked), then the scored pass, each target's receipt kept
    with ``keep_receipts``; the budget judges the whole."""
    score = partial(validate, shipped.model, val, setup, config.eval_tokens, reporter)
    compared = {}
    if config.compare_no_ttt:
        with ledger.measure("score_no_ttt", None, "diagnostic: the same windows without adaptation"):
            compared = {"val_bpb_no_ttt": _no_ttt_pass(score, shipped.runtime, shipped.ttt, config.ttt).bpb}
    receipts = shipped.runtime.TokenReceipts() if keep_receipts else None
    facts: dict = {}
    budget.receipts = receipts  # where adaptation stopped, in scoring steps
    sums = _scored_pass(score, shipped.runtime, shipped.ttt, config.ttt, ledger, receipts, facts, budget.may_adapt)
    return Scored(sums, compared, facts, budget.finish(), receipts)


def _metrics(config: EvalConfig, shipped: Shipped, val: ValData, setup: ScoringSetup, fit: dict, scored: Scored,
             data_source: str, attention: str, pack: StageDir | None) -> dict:
    """The eval's metrics: the score, how it was scored, from which bytes and data, the budget, the
    code check, and the comparison with quantize's in-memory score."""
    sums, seq_len, stride = scored.sums, setup.seq_len, setup.stride
    return {
        "val_loss": sums.loss,
        "val_bpb": sums.bpb,
        "ttt_mode": config.ttt.mode,
        **fit,
        "compiled": setup.compile_backend or "off",
        **scored.compared,
        **scored.facts,
        "tokens_scored": sums.tokens,
        # eval_tokens scored a prefix: a partial score is never a full val_bpb
        "partial": sums.tokens < usable_targets(len(val.tokens), seq_len),
        "bytes_scored": sums.bytes,
        "seq_len": seq_len,
        "stride": stride,
        "mode": _windows_kind(config.ttt.mode, seq_len, stride),
        "byte_source": val.byte_source,
        **({"sidecar_audit": val.sidecar_audit} if val.sidecar_audit else {}),
        "data_source": data_source,
        "artifact_bytes": len(shipped.artifact.data),
        "attention": attention,
        **scored.spent,
        **shipped.code_record,
        **_compare_in_memory(pack, _stream_bpb_without_adaptation(config.ttt.mode, sums.bpb, scored.compared),
                             seq_len, stride, config),
    }


def _log_result(reporter: Reporter, ledger: TimeLedger, config: EvalConfig, scored: Scored, metrics: dict,
                failure: str, out_dir: str | Path) -> None:
    """The ledger's line, then the result's."""
    spent = scored.spent
    reporter.log(ledger=",".join(f"{name}={bucket.seconds:.3f}" for name, bucket in ledger.buckets.items()))
    reporter.log(stage="eval", val_loss=scored.sums.loss, val_bpb=scored.sums.bpb, ttt=config.ttt.mode,
                 **scored.compared, artifact_bytes=metrics["artifact_bytes"], mode=metrics["mode"],
                 eval_s=spent["budgeted_s"], budget_s=config.budget_s, within_budget=spent["within_budget"],
                 adaptation_stopped_at_s=spent["adaptation_stopped_at_s"], partial=metrics["partial"],
                 status="failed" if failure else "ok", out=str(out_dir))


def memory_sizing(config: EvalConfig) -> str:
    """The eval settings that size its memory beside the model, as --set writes them (for messages):
    the TTT mode's ``memory_keys``, else batch_windows."""
    settings = [f"ttt.{key}={reduce(getattr, key.split('.'), config.ttt)}"
                for key in mode_named(config.ttt.mode).memory_keys]
    settings = settings or [f"batch_windows={config.batch_windows}"]
    return ", ".join(settings + ([f"seq_len={config.seq_len}"] if config.seq_len else []))


def log_byte_source(reporter: Reporter, val) -> None:
    """One line: where the scored bytes come from, and the sidecar audit's cost or why the table is used."""
    if val.byte_source == "sidecar":
        audit = val.sidecar_audit
        reporter.log(byte_source="sidecar", caseops=val.caseops, sidecar_audit="passed", val_docs=audit["val_docs"],
                     sidecar_bytes=audit["sidecar_bytes"], sidecar_audit_s=audit["seconds"])
    else:
        reporter.log(byte_source="tokenizer table", reason=val.byte_source_reason)


def _say_stopped(reporter: Reporter, config: EvalConfig, spent_s: float, check: int) -> None:
    """The plain line of a pass whose adaptation the budget stopped (scoring goes on)."""
    reporter.log(stopped="eval", reason="time_cap", part="adaptation", spent_s=round(spent_s, 2),
                 budget_s=config.budget_s, check=check, scoring="continues")


@contextmanager
def _rank_stage(device: str, out_dir: str | Path, force: bool, reporter: Reporter, inputs: dict):
    """Join torchrun's process group (if any) for the block; yield (rank context, writer, reporter):
    rank 0 gets the stage folder's writer and ``reporter``; the other ranks, which write and print
    nothing, a ledger of their own and a silent reporter."""
    ctx = init_distributed(resolve_device(device))
    try:
        if ctx.is_main:
            with StageWriter(out_dir, "eval", force, reporter, inputs) as writer:
                yield ctx, writer, reporter
        else:
            yield ctx, _RankLedger(TimeLedger()), silent_reporter()
    finally:
        shutdown(ctx)


@dataclass(frozen=True)
class _RankLedger:
    """What a rank other than 0 keeps of the stage writer: the ledger its phases are timed into."""

    ledger: TimeLedger
    """Timings this rank measures and nobody saves (rank 0's are the stage's)."""


def _gather_receipts(runtime, receipts, ctx: DistContext) -> dict | None:
    """Every rank's receipts as one table on rank 0 (None on the others, or without receipts)."""
    if receipts is None:
        return None
    mine = receipts.tensors(ctx.rank, ctx.world_size)
    if ctx.world_size == 1:
        return mine
    parts = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(mine, parts, dst=0)
    return runtime.merge_receipts(parts) if ctx.is_main else None


def _windows_kind(ttt_mode: str, seq_len: int, stride: int) -> str:
    """How the scored pass cut the stream: a mode that ``scores_documents`` (document LoRA) scores each
    document chunk by chunk in windows of its own (the stride plays no part); the others slide or step
    windows over the stream."""
    if mode_named(ttt_mode).scores_documents:
        return "document chunks"
    return "non-overlapping" if stride == seq_len else "sliding"


def _no_ttt_pass(score, runtime, ttt_code, ttt: TTTConfig):
    """The --compare-no-ttt diagnostic: the scored pass's own windows with adaptation off, as the mode
    declares it (``without_adaptation``): the shipped TTT code with the config it gives (document LoRA:
    learning rate 0, exactly the plain forward on each document's own windows, and no global phase),
    else the runtime's plain scoring of the stream's windows."""
    without_adaptation = mode_named(ttt.mode).without_adaptation
    if without_adaptation is not None:
        frozen = without_adaptation(ttt)
        return score("eval (no ttt)", score_stream=partial(ttt_code.score_with_ttt, config=to_dict(frozen)))
    return score("eval (no ttt)", score_stream=runtime.score_stream)


def _stream_bpb_without_adaptation(ttt_mode: str, bpb: float, compared: dict) -> float | None:
    """The score of the artifact's weights on the stream's windows, comparable with quantize's in
    memory: the score itself without TTT, else the --compare-no-ttt pass if it used stream windows."""
    mode = mode_named(ttt_mode)
    if not mode.adapts:
        return bpb
    return None if mode.scores_documents else compared.get("val_bpb_no_ttt")


def _scored_pass(score, runtime, ttt_code, ttt: TTTConfig, ledger, receipts, facts: dict, may_adapt):
    """The pass that is the score: plain windows (the shipped ``runtime``), or the shipped TTT mode
    (``ttt_code``) with its phases timed apart and ``may_adapt`` (the budget) asked before each
    adaptation step; the mode's facts land in ``facts``."""
    if not mode_named(ttt.mode).adapts:
        with ledger.measure("score", "eval", PHASE_NOTES["score"]):
            return score("eval", score_stream=partial(runtime.score_stream, receipts=receipts))
    for name in SCORED_PASS_PHASES:  # listed, in order, even when a single chunk never adapts
        ledger.add(name, 0.0, "eval", PHASE_NOTES[name])
    phase = lambda name: ledger.measure(name, "eval", phase_note(name))  # noqa: E731
    ttt_scorer = partial(ttt_code.score_with_ttt, config=to_dict(ttt), receipts=receipts, phase=phase,
                         may_adapt=may_adapt, on_fact=facts.__setitem__)
    with shipped_errors(ttt_code):
        return score(f"eval (ttt {ttt.mode})", score_stream=ttt_scorer)


@contextmanager
def shipped_errors(shipped_module):
    """The shipped code raises its own copy of GolfError (the artifact's ``errors`` module): a config
    it refuses (``ttt.freeze_blocks``, a mode it does not hold) becomes golf's one-line error."""
    root = shipped_module.__name__.partition(".")[0]
    shipped = getattr(sys.modules.get(f"{root}.errors"), "GolfError", None)
    try:
        yield
    except Exception as exc:
        if shipped is None or not isinstance(exc, shipped) or isinstance(exc, GolfError):
            raise
        raise GolfError(str(exc)) from None


def phase_note(name: str) -> str:
    """Why a phase the stage or the shipped TTT code names counts: its own note (the stage's, or the
    one a mode declares), the note of the name it begins with (global_sgd_1), or a general one; every
    phase counts toward the eval budget."""
    notes = {**PHASE_NOTES, **{key: note for mode in REGISTRY.values() for key, note in mode.notes.items()}}
    if name in notes:
        return notes[name]
    return next((note for key, note in notes.items() if name.startswith(key)), OTHER_PHASE_NOTE)


def _fit_batch(ttt_code, model, setup: ScoringSetup, config: EvalConfig) -> tuple[EvalConfig, dict]:
    """A mode that declares a ``fit_batch`` (document modes): the config with the documents per batch
    that fit the device (the shipped rule, ttt/batch_fit.py), and its facts for the metrics; other
    modes: as they are."""
    mode = mode_named(config.ttt.mode)
    if mode.fit_batch is None:
        return config, {}
    with shipped_errors(ttt_code):
        fit = ttt_code.fit_ttt_batch(model, setup, config=to_dict(config.ttt))
    return replace(config, ttt=mode.with_batch_docs(config.ttt, fit["ttt_batch_docs"])), fit


def compile_backend(config: EvalConfig, device) -> str | None:
    """The torch.compile backend the eval's forwards use, or None (eager): ``config.compile``, where
    'auto' compiles on CUDA only."""
    on = config.compile == "on" or (config.compile == "auto" and torch.device(device).type == "cuda")
    return config.compile_backend if on else None


def _warm_up(runtime, ttt_code, model, table, setup: ScoringSetup, config: EvalConfig) -> None:
    """The shipped TTT mode's warm-up (plain scoring: the compiled scoring forward's) at the shapes of
    the scored pass; it is given no val tokens."""
    if not mode_named(config.ttt.mode).adapts:
        runtime.warm_up_scoring(model, table, setup)
        return
    with shipped_errors(ttt_code):
        ttt_code.warm_up_ttt(model, table, setup, config=to_dict(config.ttt))


def _check_receipts_path(path: Path, force: bool, inputs: dict) -> None:
    """Refuse a receipts path that cannot be written before spending the eval on it, and never
    replace a file golf did not write there (the rule of every output path, ``check_output_path``:
    an existing file only with ``--force`` and only an earlier eval's receipts; no symlink; not in
    or over what the eval reads, nor in its output folder, which the eval replaces)."""
    check_output_path(path, RECEIPTS, force, inputs)
    if not path.parent.is_dir():
        raise GolfError(f"{path}: --token-nll folder {path.parent} does not exist")


def _identify_receipts(path: Path) -> tuple[str | None, str]:
    """Whether ``path`` is a safetensors file whose metadata names the eval run that wrote it."""
    if path.is_dir():
        return None, "is a folder, not an eval's receipts file"
    try:
        with safe_open(str(path), framework="pt") as handle:
            if "eval_run_id" in (handle.metadata() or {}):
                return RECEIPTS_KIND, "is an eval's receipts"
    except Exception:  # not safetensors at all (a shard, a README, ...): each reader raises its own type
        pass
    return None, "is not an eval's receipts (golf did not write it)"


RECEIPTS_KIND = "receipts"
RECEIPTS = OutputKind(RECEIPTS_KIND, "an earlier eval's receipts file (--token-nll)", _identify_receipts)


def _save_receipts(path: Path, tensors: dict, sums, run_id: str) -> dict:
    """Check the receipts against the score (each target once, the same bpb), then write them atomically."""
    positions = tensors["position"].numpy()
    if len(np.unique(positions)) != len(positions) or len(positions) != sums.tokens:
        raise GolfError(f"{path}: the receipts do not hold each scored target exactly once; nothing was written")
    nll = tensors["nll"].double().sum().item()
    recomputed = nll / (math.log(2) * int(tensors["bytes"].sum())) if sums.bytes else float("nan")
    if not abs(recomputed - sums.bpb) <= 1e-9:
        raise GolfError(f"{path}: the receipts give val_bpb {recomputed:.10f}, not {sums.bpb:.10f}; nothing was written")
    data = save_safetensors(tensors, metadata={"eval_run_id": run_id, "val_bpb": repr(sums.bpb)})
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise GolfError(f"{path}: cannot write the receipts ({exc.strerror})") from None
    return {"token_nll_file": str(path), "token_nll_sha256": sha256_bytes(data), "token_nll_rows": len(positions)}


def _choose_attention(model, setup: ScoringSetup) -> str:
    """Pin the shipped model's attention backend for scoring's precision; its name for the log."""
    return model.choose_attention(setup.device, setup.autocast_dtype or next(model.parameters()).dtype)


def _non_finite_failure(metrics: dict) -> str:
    """A nan or infinite score (weights or an adaptation that diverged) is never a result."""
    if math.isfinite(metrics["val_bpb"]) and math.isfinite(metrics["val_loss"]):
        return ""
    return f"the eval scored val_bpb {metrics['val_bpb']} (val_loss {metrics['val_loss']}): not a finite score"


def _in_memory_failure(metrics: dict) -> str:
    """A score of the artifact read from disk that differs from the in-memory one fails the stage."""
    if metrics.get("matches_in_memory", True):
        return ""
    return (f"the artifact scores val_bpb {metrics['val_bpb']:.8f} but the same weights scored "
            f"{metrics['post_quant_in_memory_val_bpb']:.8f} in memory (difference "
            f"{metrics['artifact_minus_in_memory_bpb']:+.2e} > {IN_MEMORY_TOLERANCE:g})")


def _data_dir(explicit, pack: StageDir | None) -> StageDir:
    if explicit is not None:
        return StageDir(explicit, "tokenize")
    if pack is None:
        raise GolfError("a bare artifact file records no data folder: pass --data")
    return lineage_folder(pack, "quantize").upstream("data", "tokenize")


def _lineage_data(pack: StageDir | None) -> tuple[Path, str] | None:
    """(folder, manifest sha256) of the tokenize folder the artifact's quantize stage read; None for
    a bare artifact file, or a pack folder whose quantize folder cannot be opened (nothing to compare)."""
    if pack is None:
        return None
    try:
        quant = lineage_folder(pack, "quantize")
    except GolfError:
        return None
    record = quant.manifest.inputs.get("data")
    return None if record is None else (quant.input_path("data"), record.manifest_sha256)


def _data_source(data: StageDir, explicit: bool, pack: StageDir | None, foreign_data: bool,
                 reporter: Reporter) -> str:
    """Whether ``data`` is the artifact's lineage's val data: 'lineage' (the default, or an ``explicit``
    folder with the same manifest), 'foreign' (another tokenize folder, scored only with ``foreign_data``
    and then loudly) or 'no lineage' (nothing to compare with)."""
    lineage = _lineage_data(pack) if explicit else None
    if not explicit or (lineage is not None and data.manifest_sha256 == lineage[1]):
        source = "lineage"
    elif lineage is None:
        source = "no lineage"
    elif not foreign_data:
        raise GolfError(f"{data.path}: is not the tokenize folder of the artifact's lineage ({lineage[0]}); pass "
                        f"{FOREIGN_DATA_FLAG} to score other data anyway (the score is then marked foreign)")
    else:
        source = "foreign"
        reporter.log(warning=f"scoring data other than the artifact's lineage ({FOREIGN_DATA_FLAG}): "
                             "the score is not the model's val_bpb and golf inspect will not verify it")
    reporter.log(data=source, data_path=str(data.path))
    return source


def _record_artifact_input(writer: StageWriter, path: Path, data: bytes, pack: StageDir | None) -> None:
    """Pin the artifact that was scored: through its pack folder's manifest, or by its own hash."""
    if pack is not None:
        writer.add_input("artifact", pack)
    else:
        writer.add_file_input("artifact", "artifact", path.parent, {"artifact": path})
    if writer.inputs["artifact"].files["artifact"].sha256 != sha256_bytes(data):
        raise GolfError(f"{path}: changed while it was being evaluated")


def _compare_in_memory(pack: StageDir | None, bpb: float | None, seq_len: int, stride: int,
                       config: EvalConfig) -> dict:
    """Set the artifact's score without adaptation (``bpb``; None if not measured) beside the
    post-quant bpb quantize measured on the same weights in memory."""
    if pack is None:
        return {}
    if bpb is None:
        return {"in_memory_comparison": "skipped: test-time training changes the weights or the windows "
                                        "(--compare-no-ttt compares chunk-sgd)"}
    quant = lineage_folder(pack, "quantize")
    measured = quant.manifest.metrics.get("eval", {})
    same_setup = (measured.get("seq_len") == seq_len and measured.get("stride") == stride
                  and quant.manifest.config.get("eval_tokens") == config.eval_tokens)
    if not same_setup:
        return {"in_memory_comparison": "skipped: quantize scored with other windows"}
    in_memory = quant.manifest.metrics["post_quant_val_bpb"]
    return {
        "pre_quant_val_bpb": quant.manifest.metrics["pre_quant_val_bpb"],
        "post_quant_in_memory_val_bpb": in_memory,
        "artifact_minus_in_memory_bpb": bpb - in_memory,
        "matches_in_memory": abs(bpb - in_memory) <= IN_MEMORY_TOLERANCE,
    }
