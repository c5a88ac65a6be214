"""Named configurations: the baseline, each seed record, the top of the board, and CPU forms.

Each full preset reproduces a recipe at its real size (8xH100, 600 s) and says where its numbers
come from: docs/REFERENCE.md (section 8's table of what each record's code does, sections 5-6) and
the seed descriptions in docs/seeds/. A preset carries its record's training recipe, its
quantization settings (`golf quantize` uses those of the preset a checkpoint was trained with)
and its evaluation: windows and test-time training (`golf eval --preset`; docs/TTT_CASEOPS.md).
Every full preset has a CPU form, ``<name>-cpu``: the same switches and values on a model and batch
sized for 2 CPU cores and the embedded news corpus, with step counts and sizes scaled.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import GolfError
from ..evaluate.config import EvalConfig
from ..evaluate.ttt.config import ChunkSGDConfig, LoRAConfig, PhasedConfig, TTTConfig
from ..model.config import ModelConfig
from ..quantize.config import CalibrationConfig, GroupQuant, QuantizeConfig
from ..quantize.config import DEFAULT_SCHEME, SCHEMES
from .config import RunConfig, TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    """Name given to --preset."""
    source: str
    """Where the numbers come from."""
    config: RunConfig
    """The resolved model and training settings."""
    quantize: QuantizeConfig = SCHEMES[DEFAULT_SCHEME]
    """The record's export: `golf quantize` uses it for a checkpoint trained with this preset."""
    eval: EvalConfig = EvalConfig()
    """The record's evaluation (windows, test-time training): `golf eval --preset` starts from it."""
    caseops_data: bool = False
    """The record trained and scored on CaseOps data (`golf tokenize --caseops`); `golf train` notes other data."""


# ---- the naive baseline (docs/REFERENCE.md section 5) ----
# The GPU recipes compile and warm up on dummy data for ~20 steps, as the records do.
GPU_WARMUP = dict(compile=True, warmup_steps=20, grad_accum=0)
BASELINE = RunConfig(ModelConfig(), TrainConfig(**GPU_WARMUP))

# ---- the record family's shared settings (docs/REFERENCE.md section 6, "Architecture" and "Training") ----
RECORD_MODEL = ModelConfig(
    vocab_size=8192, num_layers=11, model_dim=512, num_heads=8, num_kv_heads=4, mlp_mult=4.0,
    mlp_activation="leaky_relu2", rope_dims=16, ln_scale=True, qk_gain_init=5.0, xsa_last_n=11,
    orthogonal_init=True, skip_gates=True,
)
# Training values are the records' own (docs/REFERENCE.md section 8, read from each record folder's
# logged hyperparameters); this is #1493's (pr1776) set, and each preset below names its differences.
RECORD_TRAIN = TrainConfig(
    seq_len=2048, batch_tokens=786_432, max_steps=20_000, max_seconds=600.0, schedule="time",
    warmdown_frac=0.72, min_lr=0.0, gptq_reserve_seconds=12.0,
    matrix_lr=0.022, muon_momentum=0.99, muon_momentum_start=0.92, muon_momentum_warmup_steps=1500,
    muon_row_normalize=True, muon_weight_decay=0.095,
    embed_lr=0.03, embed_weight_decay=0.085, scalar_lr=0.02, scalar_weight_decay=0.02, adam_beta2=0.95,
    grad_clip=0.3, ema_decay=0.9965, loader="shuffled", **GPU_WARMUP,
)
# What the #1667 lineage (pr1880, pr1790, top) changed in training.
LINEAGE_1667_TRAIN = dict(matrix_lr=0.026, muon_momentum=0.97, warmdown_frac=0.75)

# The model switches follow each record's code (docs/REFERENCE.md section 8). SmearGate keeps the
# BOS mask on in every preset (the legality fix); the records before #1851 ran without it
# (model.smear_bos_mask=false reproduces them exactly).
PR401 = RunConfig(
    replace(ModelConfig(), num_layers=11, mlp_mult=3.0, rope_dims=16, rope_train_len=1024, ln_scale=True,
            smear_gate=True, smear_form="per_channel", bigram_hash_buckets=2048, bigram_hash_dim=128,
            value_embed_dim=128, value_embed_layers=(9, 10), xsa_last_n=4, orthogonal_init=True),
    replace(TrainConfig(), seq_len=2048, batch_tokens=786_432, schedule="time", warmdown_steps=3500, warmdown_frac=0.0,
            matrix_lr=0.025, muon_momentum=0.99, muon_momentum_start=0.92, muon_momentum_warmup_steps=1500,
            muon_weight_decay=0.04, embed_lr=0.035, embed_weight_decay=0.04, scalar_lr=0.025,
            scalar_weight_decay=0.04, grad_clip=0.3, ema_decay=0.997, swa_every=50, swa_lr_scale=0.2,
            qat_bits=6, qat_lr_scale=0.15, **GPU_WARMUP),
)
PR1413 = RunConfig(
    replace(RECORD_MODEL, loop_first=4, loop_last=5, loop_passes=3, loop_start_frac=0.5),
    replace(RECORD_TRAIN, matrix_lr=0.02, muon_weight_decay=0.085, warmdown_frac=0.667, ema_decay=0.997),
)
PR1776 = RunConfig(
    replace(RECORD_MODEL, qk_gain_init=5.25, loop_first=3, loop_last=5, loop_passes=3, loop_start_frac=0.35,
            parallel_residual_from=7),
    RECORD_TRAIN,
)
# #1667 (pr1880, pr1790, top): two-lane parallel residuals from layer 8, document-masked attention.
RECORD_1667_MODEL = replace(PR1776.model, parallel_residual="two_lane", parallel_residual_from=8, doc_mask=True,
                            smear_gate=True)
PR1880 = RunConfig(
    replace(RECORD_1667_MODEL, attn_gate_width=12, logit_softcap=15.0),
    # The #1667 lineage trains on document-packed rows (flash-attn varlen at every BOS).
    replace(RECORD_TRAIN, **LINEAGE_1667_TRAIN, gptq_reserve_seconds=13.0, loader="doc_packed"),
)
PR1790 = RunConfig(
    replace(RECORD_1667_MODEL, attn_gate_width=24),
    replace(PR1880.train, gptq_reserve_seconds=4.0),
)
TOP = RunConfig(
    replace(PR1790.model, attn_gate_width=12, attn_gate_sparse=True, qk_gain_init=5.0),
    replace(PR1790.train, muon_coefficients="polar_express", adam_beta2=0.99, min_lr=0.1, warmdown_frac=0.85,
            gptq_reserve_seconds=0.5),
)

# ---- the records' exports (docs/REFERENCE.md section 8; the record folders' quantization code) ----
# Every record from #1394 on: full-Hessian GPTQ on the SDClip grid, tensors of <= 65,536 elements
# kept as fp16 (the control tensors too), calibration on one rank's training batch per forward
# (786,432 / 8 = 98,304 tokens). Matrices outside attention, MLP and the embedding use MATRIX_CLIP_SIGMAS.
RECORD_BATCH_PER_RANK = 786_432 // 8
RECORD_QUANTIZE = QuantizeConfig(
    method="gptq", attention=GroupQuant(bits=6, clip_sigmas=12.85), mlp=GroupQuant(bits=6, clip_sigmas=12.85),
    embedding=GroupQuant(bits=8, clip_sigmas=20.0), other=GroupQuant(bits=6, clip_sigmas=12.85),
    control_dtype="float16", calibration=CalibrationConfig(batches=64, batch_tokens=RECORD_BATCH_PER_RANK),
    device="auto",
)
# #1667 lineage: attention and MLP get their own k, the embedding int7.
LINEAGE_1667_QUANTIZE = replace(RECORD_QUANTIZE, attention=GroupQuant(bits=6, clip_sigmas=13.0),
                                mlp=GroupQuant(bits=6, clip_sigmas=12.0), embedding=GroupQuant(bits=7, clip_sigmas=15.0))
QUANTIZE: dict[str, QuantizeConfig] = {
    "baseline": SCHEMES["baseline-int8"],
    # Seed 003: round-to-nearest; attention and MLP int6 with its per-matrix clip search, the rest
    # int8 on the baseline's quantile; control tensors fp32, other small tensors fp16.
    "pr401": QuantizeConfig(method="rtn", attention=GroupQuant(bits=6, clip="quantile_search"),
                            mlp=GroupQuant(bits=6, clip="quantile_search"), embedding=GroupQuant(bits=8, clip="quantile"),
                            other=GroupQuant(bits=8, clip="quantile"), device="auto"),
    "pr1413": RECORD_QUANTIZE,
    "pr1776": RECORD_QUANTIZE,
    "pr1880": LINEAGE_1667_QUANTIZE,
    "pr1790": replace(LINEAGE_1667_QUANTIZE, calibration=replace(RECORD_QUANTIZE.calibration, batches=16)),
    "top": replace(LINEAGE_1667_QUANTIZE, mlp=GroupQuant(bits=6, clip_sigmas=11.5),
                   embedding=GroupQuant(bits=7, clip_sigmas=14.0), gate_bits=8,
                   calibration=replace(RECORD_QUANTIZE.calibration, batches=16),
                   lqer_rank=4, lqer_top_k=3, lqer_a_bits=2, lqer_b_bits=4, lqer_group=64),
}

# ---- the records' evaluation (docs/TTT_CASEOPS.md sections B.1, C, D.1, G.1; seeds 000-004) ----
# The baseline scores non-overlapping windows of its training length. From #401 on, the records
# score sliding windows of 2048 with stride 64 (every target sees >= 1,984 tokens of context).
RECORD_WINDOWS = dict(seq_len=2048, stride=64, device="auto")
SLIDING_EVAL = EvalConfig(**RECORD_WINDOWS)
# Chunk SGD as #1413/#1477/#1493 ran it (section B.1), every value spelled out.
CHUNK_SGD_EVAL = EvalConfig(**RECORD_WINDOWS, ttt=TTTConfig(mode="chunk-sgd", chunk_sgd=ChunkSGDConfig(
    chunk_tokens=32768, lr=0.005, momentum=0.9, epochs=3, batch_seqs=32, grad_clip=1.0, freeze_blocks=0)))
# Phased doc-LoRA as seed 000 (#1790) describes it: #1767's LoRA (rank 128, alpha 144, warm-start A,
# weight decay 1.0, AdamW betas (0, 0.999)) and 3 global SGD phases over 2,000 documents. Documents
# are scored in chunks of lora.chunk inside 2048-token windows of their own, so no stride is set.
PHASED_1790 = TTTConfig(
    mode="phased",
    lora=LoRAConfig(chunk=48, batch_docs=64, rank=128, alpha=144.0, lr=1e-4, beta1=0.0, beta2=0.999, weight_decay=1.0,
                    warm_start_a=True),
    phased=PhasedConfig(docs=2000, phases=3, global_lr=0.001, global_momentum=0.9, global_epochs=1,
                        global_chunk_tokens=32768, global_batch_seqs=32, global_grad_clip=1.0, global_doc_mask=True))
# The top record's nine overrides include four of these (section G.1): rank 80, beta2 0.99, weight
# decay 0.5, 2,500 prefix documents.
PHASED_TOP = replace(PHASED_1790, lora=replace(PHASED_1790.lora, rank=80, beta2=0.99, weight_decay=0.5),
                     phased=replace(PHASED_1790.phased, docs=2500))
EVAL: dict[str, EvalConfig] = {
    "baseline": EvalConfig(device="auto"),
    "pr401": SLIDING_EVAL,
    "pr1413": CHUNK_SGD_EVAL,
    "pr1776": CHUNK_SGD_EVAL,
    "pr1880": CHUNK_SGD_EVAL,  # seed 001: "Score-first TTT (SGD, momentum 0.9, LR 0.005, 3 epochs, 32K chunks)"
    "pr1790": EvalConfig(seq_len=2048, device="auto", ttt=PHASED_1790),
    "top": EvalConfig(seq_len=2048, device="auto", ttt=PHASED_TOP),
}

FULL_PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("baseline", "docs/REFERENCE.md section 5: the challenge's naive baseline (1.2244 bpb), 9x512 sp1024, Muon 0.04, "
           "524,288 tokens/step at seq 1024; warm-down ~1200 of ~13,780 steps (0.087); int8 RTN export.", BASELINE,
           QUANTIZE["baseline"], EVAL["baseline"]),
    Preset("pr401", "seed 003 (PR #401, 1.1243), its record folder 2026-03-22_11L_EMA_GPTQ-lite_warmdown3500_QAT015: 11L, "
           "MLP 3x relu^2, partial RoPE 16 (base stretched for 2048, built for 1024), LN scale, per-channel SmearGate "
           "(BOS mask on; the record had none), BigramHash 2048x128, VE128 on layers 9-10, XSA last 4, orthogonal "
           "init, QK-gain 1.5, Muon 0.025 mom 0.92->0.99/1500 wd 0.04, AdamW 0.035/0.025 wd 0.04, beta2 0.95, clip 0.3, "
           "EMA 0.997, tight SWA /50 under 0.2, late QAT int6 under 0.15, warm-down 3500 steps; RTN int6 export with "
           "a per-matrix clip search. sp1024, no TTT.", PR401, QUANTIZE["pr401"], EVAL["pr401"]),
    Preset("pr1413", "seed 004 (PR #1413, 1.08279), record 2026-04-06_SP8192_QK5_LegalTTT: docs/REFERENCE.md section 6 "
           "architecture, layers 4-5 run 3 times from 50%, QK-gain 5.0, MuonEq-R; docs/REFERENCE.md section 8: MATRIX_LR "
           "0.02, Muon/embed/scalar wd 0.085/0.085/0.02, beta2 0.95, warm-down 0.667, EMA 0.997; GPTQ int6 k 12.85, "
           "embedding int8 k 20, 64 calibration batches, 12 s reserve.", PR1413, QUANTIZE["pr1413"], EVAL["pr1413"]),
    Preset("pr1776", "seed 002 (PR #1776, 1.08083) = #1493, record 2026-04-09_SP8192_3LayerRecur_ParResid_QK525: + layers "
           "3-5 run 3 times (17 virtual layers) from 35%, parallel residuals (shared input) from layer 7, QK-gain 5.25; "
           "MATRIX_LR 0.022, MUON_WD 0.095, beta2 0.95, warm-down 0.72, EMA 0.9965; export as pr1413 (docs/REFERENCE.md "
           "section 8).", PR1776, QUANTIZE["pr1776"], EVAL["pr1776"]),
    Preset("pr1880", "seed 001 (PR #1880, 1.07750), #1667 architecture (record 2026-04-16_SmearGate_AttentionOutputGate_"
           "ScoreFirstTTT): pr1776 with two-lane parallel residuals from layer 8, attention output gate (width 12), "
           "SmearGate on the raw embedding (BOS fix on; #1667 ran without it), logit softcap 15, document-packed batches "
           "with document-masked attention; MATRIX_LR 0.026, momentum 0.97, warm-down 0.75; GPTQ k 13/12 "
           "(attention/MLP), embedding int7 k 15, 64 calibration batches, 13 s reserve (docs/REFERENCE.md section 8).",
           PR1880, QUANTIZE["pr1880"], EVAL["pr1880"]),
    Preset("pr1790", "seed 000 (PR #1790, 1.06991), #1667 architecture: pr1880's recipe with output gate width 24, softcap "
           "30; GPTQ reserve 4 s and 16 calibration batches (the seed's run command; docs/REFERENCE.md section 8).",
           PR1790, QUANTIZE["pr1790"], EVAL["pr1790"]),
    Preset("top", "PR #1855 (1.0611), record 2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack: pr1790 + sparse "
           "gate (width 12, scale 0.5), QK-gain 5.0, Polar Express Newton-Schulz, beta2 0.99, warm-down 0.85 to the "
           "floor max(line, 0.1); export GPTQ k 13/11.5, embedding int7 k 14, int8 gates, LQER rank 4 on 3 matrices, "
           "16 calibration batches, 0.5 s reserve (docs/REFERENCE.md section 8). Its data is CaseOps (golf tokenize "
           "--caseops).", TOP, QUANTIZE["top"], EVAL["top"], caseops_data=True),
]}

# ---- CPU forms: same switches, sized for 2 cores and the news corpus ----
CPU_LAYERS, CPU_DIM, CPU_HEADS = 6, 128, 4
# The final validation scores the whole val split on golf eval's default windows, so golf quantize
# reuses it as the pre-quant score instead of scoring the split again.
CPU_TRAIN = dict(seq_len=256, batch_tokens=4096, max_steps=500, max_seconds=300.0, device="cpu",
                 val_tokens=0, log_every=50, schedule="steps", gptq_reserve_seconds=0.0,
                 compile=False, warmup_steps=0, grad_accum=1)
# The records run ~5,000-7,000 steps; the CPU forms run 500. Step-counted settings shrink by this.
STEP_RATIO = 10


def _remap_layer(layer: int, old: int, new: int) -> int:
    return round(layer * (new - 1) / max(1, old - 1))


def cpu_model(model: ModelConfig) -> ModelConfig:
    """The same switches at 6x128 (4x128 for the 9-layer baseline) with vocab 1024."""
    layers = 4 if model.num_layers < 11 else CPU_LAYERS
    head_dim = CPU_DIM // CPU_HEADS
    changes = dict(vocab_size=1024, num_layers=layers, model_dim=CPU_DIM, num_heads=CPU_HEADS,
                   num_kv_heads=CPU_HEADS * model.num_kv_heads // model.num_heads,
                   rope_dims=model.rope_dims * head_dim // model.head_dim if model.rope_dims else 0)
    if model.looped:
        span = model.loop_last - model.loop_first + 1
        first = _remap_layer(model.loop_first, model.num_layers, layers)
        changes.update(loop_first=first, loop_last=min(layers - 1, first + max(1, round(span * layers / model.num_layers)) - 1))
    if model.parallel_residual_from >= 0:
        changes["parallel_residual_from"] = _remap_layer(model.parallel_residual_from, model.num_layers, layers)
    if model.rope_train_len:  # the same ratio of training length to built length
        changes["rope_train_len"] = max(1, model.rope_train_len * CPU_TRAIN["seq_len"] // RECORD_TRAIN.seq_len)
    if model.xsa_last_n:
        changes["xsa_last_n"] = max(1, round(model.xsa_last_n * layers / model.num_layers))
    if model.value_embed_layers:
        changes["value_embed_layers"] = tuple(sorted({_remap_layer(l, model.num_layers, layers) for l in model.value_embed_layers}))
    if model.bigram_hash_buckets:
        changes.update(bigram_hash_buckets=512, bigram_hash_dim=32)
    if model.value_embed_dim:
        changes["value_embed_dim"] = 32
    return replace(model, **changes)


def cpu_train(train: TrainConfig) -> TrainConfig:
    """The same optimizer, schedule and averaging values over a 500-step budget (step counts / 10)."""
    changes = dict(CPU_TRAIN, muon_momentum_warmup_steps=max(1, train.muon_momentum_warmup_steps // STEP_RATIO))
    if train.warmdown_steps:
        changes["warmdown_steps"] = max(1, train.warmdown_steps // STEP_RATIO)
    if train.ema_decay:
        changes["ema_decay"] = round(1 - (1 - train.ema_decay) * STEP_RATIO, 6)  # same window in steps
    if train.swa_every:
        changes["swa_every"] = max(1, train.swa_every // STEP_RATIO)
    return replace(train, **changes)


def cpu_quantize(quantize: QuantizeConfig, full: ModelConfig, cpu: ModelConfig, train: TrainConfig) -> QuantizeConfig:
    """The same export for the CPU-sized model: the kept-float size limit shrinks with the matrices'
    area (so the same tensors stay float), and each calibration batch is one CPU training batch,
    as each record's is one rank's training batch."""
    area = (cpu.model_dim / full.model_dim) ** 2
    return replace(quantize, device="cpu", keep_float_max_numel=round(quantize.keep_float_max_numel * area),
                   calibration=replace(quantize.calibration, batch_tokens=train.batch_tokens))


# The records' val split is 50,000 documents; the news corpus's is 383 (README, reference run).
RECORD_VAL_DOCS, CPU_VAL_DOCS = 50_000, 383


def cpu_eval(evaluation: EvalConfig, train: TrainConfig) -> EvalConfig:
    """The same modes and hyperparameters at the CPU window (seq 256, 1/8 of 2048). Token counts
    scale with the window, so a chunk still holds 16 training sequences (32,768 -> 4,096); the
    stride stays 64 tokens (the records' 1/32 of the window would be 8, 32 forwards per target:
    too slow for 2 cores); the phased prefix stays the same share of the val documents (2,000 of
    50,000 -> 15 of 383), with at least one document per phase."""
    if evaluation.seq_len is None:
        return replace(evaluation, device="cpu")
    ratio = train.seq_len / evaluation.seq_len
    ttt, phased = evaluation.ttt, evaluation.ttt.phased
    ttt = replace(ttt, chunk_sgd=replace(ttt.chunk_sgd, chunk_tokens=max(1, round(ttt.chunk_sgd.chunk_tokens * ratio))),
                  phased=replace(phased, global_chunk_tokens=max(1, round(phased.global_chunk_tokens * ratio)),
                                 docs=max(phased.phases, round(phased.docs * CPU_VAL_DOCS / RECORD_VAL_DOCS))))
    return replace(evaluation, seq_len=train.seq_len, device="cpu", ttt=ttt)


def cpu_form(preset: Preset) -> Preset:
    config = RunConfig(cpu_model(preset.config.model), cpu_train(preset.config.train))
    quantize = cpu_quantize(preset.quantize, preset.config.model, config.model, config.train)
    return Preset(f"{preset.name}-cpu", f"CPU form of '{preset.name}': same switches and recipe values, 6x128 "
                  "(baseline 4x128), vocab 1024, seq 256, 4,096 tokens/step, 500 steps; EMA window and step counts "
                  "scaled by 1/10, kept-float limit by the matrices' area, one CPU batch per calibration batch; "
                  "eval at seq 256, TTT chunks scaled with the window, the phased prefix with the val documents.",
                  config, quantize, cpu_eval(preset.eval, config.train), preset.caseops_data)


# A step budget alone, scheduled by steps, and no wall-clock cap: the run (run_all.sh's) ends on the
# same step with the same learning rates on an idle or a loaded machine, so its val_bpb does not
# depend on the load. The ledger still times the steps and judges them against the 600 s budget.
TINY = Preset("tiny", "The baseline architecture shrunk for 2 CPU cores and the embedded news corpus: 4x128, seq 256, "
              "4,096 tokens/step, 500 steps scheduled by steps with no wall-clock cap, so the result does not "
              "depend on the machine's load (run_all.sh uses it).",
              RunConfig(cpu_model(BASELINE.model), replace(cpu_train(BASELINE.train), warmdown_frac=0.3,
                                                            schedule="steps", max_seconds=None,
                                                            muon_momentum_warmup_steps=100)))

PRESETS: dict[str, Preset] = {
    "tiny": TINY,
    **FULL_PRESETS,
    **{f"{name}-cpu": cpu_form(p) for name, p in FULL_PRESETS.items() if name != "baseline"},
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise GolfError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]


def with_tokenizer_vocab(config: RunConfig, tokenizer_vocab: int, explicit: bool) -> RunConfig:
    """A preset's vocab is a default: the tokenizer's replaces it unless model.vocab_size was set
    explicitly, and an explicit value below the tokenizer's is an error that says what to set."""
    if not explicit:
        return replace(config, model=replace(config.model, vocab_size=tokenizer_vocab))
    if config.model.vocab_size < tokenizer_vocab:
        raise GolfError(f"model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's "
                        f"{tokenizer_vocab}: set model.vocab_size={tokenizer_vocab} (or more), or leave it "
                        "unset to take the tokenizer's")
    return config

