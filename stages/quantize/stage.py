"""`golf quantize`: trained weights -> quantized codes, with pre- and post-quant bpb side by side.

Reads a train folder (never modified) and the tokenize folder it was trained on (or another one
given explicitly, which must share its tokenizer). Writes ``quantized.safetensors`` (codes,
scales, kept-float tensors; the index and model config in its metadata) and a manifest whose
metrics hold the pre-quant and post-quant val bpb and a per-tensor report.
"""

from __future__ import annotations

import json
from pathlib import Path


from ..config import from_dict, to_dict
from ..contract.lineage import require_same_tokenizer
from ..contract.stage_dir import StageDir, StageWriter
from ..device import resolve_device
from ..errors import GolfError
from ..evaluate.val_data import load_val
from ..evaluate.validate import validate
from ..model.checkpoint import load_model_weights, load_tensors, save_tensors
from ..model.config import ModelConfig
from ..model.gpt import GPT
from ..progress import Reporter
from .config import QuantizeConfig
from .dequant import dequantize_state
from .rtn import quantize_state

QUANTIZED_FILE = "quantized.safetensors"


def data_dir_of(stage: StageDir, explicit: str | Path | None) -> StageDir:
    """The tokenize folder to score on: the one given, else the one the upstream stage recorded."""
    if explicit is not None:
        return StageDir(explicit, "tokenize")
    record = stage.manifest.inputs.get("data")
    if record is None:
        raise GolfError(f"{stage.path}: records no data input; pass --data")
    return StageDir(record.path, "tokenize")


def run_quantize(config: QuantizeConfig, train_dir: str | Path, out_dir: str | Path,
                 data_dir: str | Path | None = None, force: bool = False, reporter: Reporter | None = None):
    reporter = reporter or Reporter()
    train = StageDir(train_dir, "train")
    data = data_dir_of(train, data_dir)
    require_same_tokenizer(train.lineage, f"checkpoint {train.path}", data.lineage, f"data {data.path}")
    model_config = from_dict(ModelConfig, train.lineage["model_config"])
    seq_len = config.eval_seq_len or int(train.manifest.config["train"]["seq_len"])
    stride = config.eval_stride or seq_len
    with StageWriter(out_dir, "quantize", force) as writer:
        ledger = writer.ledger
        with ledger.measure("load", note="reading the checkpoint and val data: outside both budgets"):
            state = load_tensors(train.file("weights"))
            model = load_model_weights(GPT(model_config), state, str(train.file("weights")))
            val = load_val(data, model_config.vocab_size)
            device = resolve_device(config.device)
            model.to(device)
        writer.add_input("checkpoint", train)
        writer.add_input("data", data)

        def score(label: str):
            with ledger.measure(f"evaluate_{label}", note="diagnostic scoring on val: outside both budgets"):
                sums = validate(model, val, seq_len, stride, config.eval_batch_windows, device,
                                config.eval_tokens, reporter, f"{label} bpb")
            reporter.log(**{f"{label}_val_loss": sums.loss, f"{label}_val_bpb": sums.bpb})
            return sums

        pre = score("pre_quant")
        with ledger.measure("quantize", note="round-to-nearest reads no training data: outside both budgets"):
            tensors, index, report = quantize_state(state, config)
            load_model_weights(model, dequantize_state(tensors, index), "dequantized weights")
        post = score("post_quant")

        lineage = dict(train.lineage)
        metadata = {
            "quant_index": json.dumps(index),
            "model_config": json.dumps(lineage["model_config"]),
            "lineage": json.dumps(lineage),
            "train_seq_len": str(train.manifest.config["train"]["seq_len"]),
        }
        save_tensors(writer.path(QUANTIZED_FILE), tensors, metadata)
        writer.add_output("quantized", writer.path(QUANTIZED_FILE))
        metrics = {
            "eval": {"seq_len": seq_len, "stride": stride, "tokens_scored": pre.tokens, "bytes_scored": pre.bytes},
            "pre_quant_val_loss": pre.loss,
            "pre_quant_val_bpb": pre.bpb,
            "post_quant_val_loss": post.loss,
            "post_quant_val_bpb": post.bpb,
            "quant_gap_bpb": post.bpb - pre.bpb,
            "raw_stored_bytes": sum(r["stored_bytes"] for r in report),
            "tensors": report,
        }
        manifest = writer.commit(to_dict(config), lineage, metrics, reporter.text())
    reporter.log(stage="quantize", pre_quant_val_bpb=pre.bpb, post_quant_val_bpb=post.bpb,
                 quant_gap_bpb=post.bpb - pre.bpb, out=str(out_dir))
    return manifest
