"""Quantize and pack the `top` preset at its real shapes and the top record's settings: time and bytes.

    python bench/quant_top.py                        # CPU
    python bench/quant_top.py --device cuda          # calibration and GPTQ on a GPU

The weights come from a few CPU-sized steps of the `top` preset at full width (36M parameters,
vocab 8192, on the news corpus tokenized at 8192), enough to move every zero-initialized matrix
off zero (they stay near their init: sizes and times are real, the bpb gap is not meaningful).
They are quantized once at the top record's settings (RECORD_SETTINGS: gptq-lqer, attention k 13,
MLP k 11.5, embedding int7 k 14, small tensors fp16; docs/REFERENCE.md section 8); the quantize
folder is reused while its config is unchanged. Then, from that one folder:
- the packing table: the artifact's bytes for each packing choice (today's groups and brotli, codes
  by matrix type, transposed, rows reordered by similarity, each codec, golf's rans);
- the real `golf pack` with the default config: artifact bytes against the entropy prediction and
  against 15,950,000;
- LQER's two storage formats on the corrected matrices: bytes and error.
Saves bench/results/quant_top_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common import ROOT, print_table, save
from packing_choices import laid_out, similarity_order, stored_permutation

from stages.config import apply_overrides, to_dict
from stages.contract.stage_dir import StageDir
from stages.model.checkpoint import load_tensors, load_tensors_and_metadata
from stages.artifact.encode import compress
from stages.artifact.quantized import QuantizedMetadata
from stages.artifact.streams import is_code_stream, matrix_type
from stages.artifact.writer import artifact_parts, assemble_artifact, weight_payloads
from stages.pack.config import SIZE_LIMIT, PackConfig
from stages.pack.stage import run_pack
from stages.quantize.dequant import dequantize_rows, lqer_factors
from stages.quantize.entropy import predicted_code_bytes, predicted_value_bytes
from stages.quantize.lqer import FORMATS, correction_bytes, lqer_correction
from stages.quantize.config import get_scheme
from stages.quantize.stage import run_quantize
from stages.tokenize.stage import run_tokenize
from stages.tokenize.config import TokenizeConfig
from stages.train.presets import get_preset
from stages.train.stage import run_train

SHORT_RUN = ["train.device=cpu", "train.compile=false", "train.warmup_steps=0", "train.seq_len=256",
             "train.batch_tokens=2048", "train.grad_accum=1", "train.schedule=steps", "train.max_seconds=none",
             "train.val_tokens=8192", "train.log_every=100000", "train.gptq_reserve_seconds=0"]
# The top record's quantization (docs/REFERENCE.md section 8). Its int8 gate weights are not
# reproduced: golf keeps the gates (8x12 per layer) float, like every control tensor.
RECORD_SETTINGS = ["attention.clip_sigmas=13", "mlp.clip_sigmas=11.5", "embedding.bits=7",
                   "embedding.clip_sigmas=14", "control_dtype=float16"]
GOAL_BYTES = 15_950_000
# Matrix types whose rows the record reorders by similarity before compressing.
REORDERED_TYPES = ("tok_emb", "attn.c_q", "mlp.fc")
UNGATED = 2**40


def data_8k(path: Path) -> Path:
    if not (path / "manifest.json").is_file():
        run_tokenize(TokenizeConfig(vocab_size=8192), path)
    return path


def short_top_run(data: Path, out: Path, steps: int) -> Path:
    if not (out / "manifest.json").is_file():
        config = apply_overrides(get_preset("top").config, [*SHORT_RUN, f"train.max_steps={steps}"])
        run_train(config, data, out, preset="top (short CPU run)")
    return out


def quantized_at_record_settings(train: Path, folder: Path, device: str, batches: int) -> tuple[StageDir, float]:
    """The quantize folder at RECORD_SETTINGS (reused when its config matches) and its wall seconds (0: reused)."""
    config = apply_overrides(get_scheme("gptq-lqer"), [
        f"device={device}", "eval_tokens=16384", f"calibration.batches={batches}", "calibration.seq_len=256",
        "calibration.batch_tokens=8192", *RECORD_SETTINGS])
    if (folder / "manifest.json").is_file() and StageDir(folder, "quantize").manifest.config == to_dict(config):
        return StageDir(folder, "quantize"), 0.0
    start = time.perf_counter()
    run_quantize(config, train, folder, force=True)
    return StageDir(folder, "quantize"), time.perf_counter() - start


# ---- the packing table ----
def code_matrices(tensors: dict[str, torch.Tensor], parts) -> dict[str, list[tuple[str, np.ndarray]]]:
    """{matrix type: [(name, codes), ...]} in the code stream's order."""
    by_type: dict[str, list] = {}
    for entry in parts.header["weights"]["tensors"]:
        if is_code_stream(entry["stream"]):
            by_type.setdefault(matrix_type(entry["name"]), []).append((entry["name"], tensors[entry["name"]].numpy()))
    return by_type


def type_streams(by_type, transpose: bool, reorder: bool) -> tuple[dict[str, bytes], bytes]:
    """Each type's codes laid out as asked, and the stored row permutations (uint16, record style)."""
    streams, permutations = {}, []
    for kind, matrices in by_type.items():
        chunks = []
        for _name, codes in matrices:
            order = similarity_order(codes) if reorder and kind in REORDERED_TYPES else None
            if order is not None:
                permutations.append(stored_permutation(order))
            chunks.append(laid_out(codes, transpose, order).tobytes())
        streams[kind] = b"".join(chunks)
    return streams, b"".join(permutations)


def compressed_total(streams: dict[str, bytes], codec: str, pool: ThreadPoolExecutor) -> int:
    return sum(pool.map(lambda data: len(compress(data, codec)), streams.values()))


def lzma_order0_settings(data: bytes) -> int:
    """lzma with no literal context and no position bits (lc=lp=pb=0): its best case on codes."""
    import lzma

    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "lc": 0, "lp": 0, "pb": 0}]
    return len(lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters))


def packing_table(tensors, metadata) -> list[dict]:
    """One row per packing choice. Rows that only change how the codes are coded give the exact
    bytes of the codes and the artifact total they imply (the rest of golf's default artifact:
    code, header, scales and floats, unchanged); 'full artifact' rows are real artifacts."""
    default = PackConfig()
    quantized = QuantizedMetadata.from_metadata(metadata, "quantized.safetensors")
    parts = artifact_parts(tensors, quantized, default.layout())
    payloads = weight_payloads(parts, default.codecs())
    data, breakdown = assemble_artifact(parts, payloads)
    codes_now = len(payloads["codes"][1])
    rest = len(data) - codes_now
    rows = []

    def row(choice: str, codes_bytes: int | None, total: int, note: str, seconds: float,
            permutation_bytes: int = 0) -> None:
        rows.append({"choice": choice, "codes_bytes": codes_bytes, "permutation_bytes": permutation_bytes,
                     "artifact_bytes": total, "vs_goal": GOAL_BYTES - total, "seconds": round(seconds, 1), "how": note})
        print(json.dumps(rows[-1]), flush=True)  # the table takes minutes: show each row as it lands

    start = time.perf_counter()
    before = PackConfig(streams="group", codes_codec="brotli", code_codec="lzma")
    old_parts = artifact_parts(tensors, quantized, before.layout())
    old_data, _ = assemble_artifact(old_parts, weight_payloads(old_parts, before.codecs()))
    row("before: 4 group sections, brotli 11, code lzma", None, len(old_data), "full artifact", time.perf_counter() - start)

    by_type = code_matrices(tensors, parts)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for choice, transpose, reorder in (("codes by matrix type, brotli 11", False, False),
                                           ("+ transposed (column-major)", True, False),
                                           ("+ rows by similarity (tok_emb, c_q, fc), permutations stored", True, True)):
            start = time.perf_counter()
            streams, permutations = type_streams(by_type, transpose, reorder)
            codes = compressed_total(streams, "brotli", pool)
            stored = len(compress(permutations, "brotli")) if permutations else 0
            row(choice, codes, rest + codes + stored, "per-type brotli streams (+ brotli of the uint16 permutations)",
                time.perf_counter() - start, stored)
        streams, _ = type_streams(by_type, False, False)
        for choice, measure in (("codes by matrix type, lzma 9e", lambda: compressed_total(streams, "lzma", pool)),
                                ("codes by matrix type, lzma 9e lc0 lp0 pb0",
                                 lambda: sum(pool.map(lzma_order0_settings, streams.values()))),
                                ("codes by matrix type, zstd 22", lambda: compressed_total(streams, "zstd", pool))):
            start = time.perf_counter()
            codes = measure()
            row(choice, codes, rest + codes, "per-type streams", time.perf_counter() - start)
    everything = parts.stream_bytes["codes"]
    for choice, segments in (("rans, one table for all codes", None),
                             ("rans, one table per tensor", [codes.size for m in by_type.values() for _, codes in m])):
        start = time.perf_counter()
        codes = len(compress(everything, "rans", segments=segments))
        row(choice, codes, rest + codes, "one rans stream", time.perf_counter() - start)
    row("rans, one table per matrix type (golf's default)", codes_now, len(data), "full artifact", 0.0)
    return rows


# ---- LQER's storage formats ----
def lqer_formats(state, tensors, index) -> list[dict]:
    """Bytes and error of each storage format on the matrices the quantizer corrected."""
    rows = []
    for name, entry in index.items():
        if not entry.get("lqer"):
            continue
        weight = state[name].float()
        error = weight - dequantize_rows(tensors[name + ".q"], tensors[name + ".scale"])
        lqer = entry["lqer"]
        for storage in FORMATS:
            stored = lqer_correction(error, lqer["rank"], lqer["a_bits"], lqer["b_bits"], lqer["group"], storage)
            a, b = lqer_factors(name, {**lqer, "format": storage}, entry["shape"],
                                {f"{name}.lqer.{key}": tensor for key, tensor in stored.items()})
            raw = b"".join(t.numpy().tobytes() for t in stored.values())
            rows.append({"tensor": name, "format": storage,
                         "raw_bytes": correction_bytes(*entry["shape"], lqer["rank"], lqer["group"], storage),
                         "brotli_bytes": len(compress(raw, "brotli")),
                         "error_left": round(float((error - a @ b).norm() / error.norm()), 4),
                         "weight_error_before": round(float(error.norm() / weight.norm()), 5),
                         "weight_error_after": round(float((error - a @ b).norm() / weight.norm()), 5)})
    return rows


# ---- the real pack ----
def predicted_bytes(tensors, metadata) -> float:
    """The quantize report's prediction, recomputed from the stored tensors with today's predictor
    (a reused quantize folder keeps the report of the golf that wrote it): codes and row scales
    at their order-0 entropy, everything else (LQER factors, float tensors) raw."""
    total = 0.0
    for name, entry in json.loads(metadata["quant_index"]).items():
        if entry["kind"] == "rows":
            total += predicted_code_bytes(tensors[name + ".q"]) + predicted_value_bytes(tensors[name + ".scale"])
            total += sum(t.numel() * t.element_size() for key, t in tensors.items() if key.startswith(name + ".lqer."))
        else:
            total += tensors[name].numel() * tensors[name].element_size()
    return total


def real_pack(quant: StageDir, out: Path) -> dict:
    start = time.perf_counter()
    pack = run_pack(replace(PackConfig(), limit=UNGATED), quant.path, out, force=True).metrics
    seconds = time.perf_counter() - start
    predicted_weights = predicted_bytes(*load_tensors_and_metadata(quant.file("quantized")))
    actual_weights = pack["bytes_weights"]
    predicted_total = predicted_weights + pack["bytes_code"] + pack["bytes_header"]
    return {
        "pack_seconds": round(seconds, 2),
        "predicted_weight_bytes": round(predicted_weights), "actual_weight_bytes": actual_weights,
        "weights_error_pct": round(100 * (predicted_weights - actual_weights) / actual_weights, 3),
        "predicted_artifact_bytes": round(predicted_total), "artifact_bytes": pack["bytes_total"],
        "artifact_error_pct": round(100 * (predicted_total - pack["bytes_total"]) / pack["bytes_total"], 3),
        "code_bytes": pack["bytes_code"], "header_bytes": pack["bytes_header"],
        "goal_bytes": GOAL_BYTES, "under_goal_by": GOAL_BYTES - pack["bytes_total"],
        "margin_bytes": SIZE_LIMIT - pack["bytes_total"],
        "sections": {group: sizes for group, sizes in pack["groups"].items()},
    }


def unpack_seconds(artifact: Path) -> float:
    from stages.artifact.container import read_container
    from stages.artifact.layout import decode_tensors

    start = time.perf_counter()
    decode_tensors(*read_container(artifact.read_bytes()))
    return round(time.perf_counter() - start, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=6, help="CPU training steps of the short run")
    parser.add_argument("--batches", type=int, default=4, help="calibration batches of 8,192 tokens")
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "bench" / "quant_top")
    args = parser.parse_args()
    data = data_8k(ROOT / "artifacts" / "bench" / "tokenize8k")
    train = short_top_run(data, args.work / "train", args.steps)
    quant, quantize_wall = quantized_at_record_settings(train, args.work / "record" / "quantize", args.device, args.batches)
    ledger, metrics = quant.manifest.ledger, quant.manifest.metrics
    tensors, metadata = load_tensors_and_metadata(quant.file("quantized"))
    index = json.loads(metadata["quant_index"])

    table = packing_table(tensors, metadata)
    print_table("top at the record's settings: artifact bytes per packing choice", table,
                ["choice", "codes_bytes", "permutation_bytes", "artifact_bytes", "vs_goal", "seconds"])
    lqer = lqer_formats(load_tensors(StageDir(train, "train").file("weights")), tensors, index)
    print_table("LQER storage formats on the corrected matrices", lqer,
                ["tensor", "format", "raw_bytes", "brotli_bytes", "error_left", "weight_error_before",
                 "weight_error_after"])
    pack = real_pack(quant, args.work / "record" / "pack")
    summary = {
        "params": StageDir(train).manifest.metrics["params"], "device": args.device,
        "settings": "gptq-lqer " + " ".join(RECORD_SETTINGS),
        "quantize_wall_seconds": round(quantize_wall, 2) if quantize_wall else "reused",
        "calibration_seconds": round(ledger["calibration"]["seconds"], 2),
        "gptq_seconds": round(ledger["quantize"]["seconds"], 2),
        "gap_bpb_16k_tokens": metrics["quant_gap_bpb"],
        **pack, "unpack_seconds": unpack_seconds(args.work / "record" / "pack" / "model.golf"),
    }
    print_table("top at the record's settings, golf's default pack", [summary],
                ["params", "calibration_seconds", "gptq_seconds", "pack_seconds", "unpack_seconds",
                 "predicted_artifact_bytes", "artifact_bytes", "artifact_error_pct", "under_goal_by"])
    save(f"quant_top_{args.device}", [{**summary, "packing_table": table, "lqer_formats": lqer}],
         {**vars(args), "work": str(args.work)})


if __name__ == "__main__":
    main()
