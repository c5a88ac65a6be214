"""Golf's forward against each seed record's own published code: same tiny shapes, fp32, on CPU.

    python bench/record_fidelity.py [--mirror PATH] [--presets pr401,top]

For every seed preset this reads the record's train_gpt.py from a local clone of the challenge
repository (git show, so nothing is copied into golf; the lzma + base85 wrappers are decoded in
memory), runs it as a module with stand-ins for what a CPU lacks (flash-attn becomes PyTorch SDPA
in the flash-attn layout, Triton kernels are never called in eval mode), builds its GPT at tiny
shapes through the record's own environment-variable hyperparameters (plus the settings of the
record's run command), gives every weight random values, maps the state dict onto golf's
parameter names and compares the logits of golf's model built from the preset at the same shapes.

Each preset is compared with SmearGate's BOS mask as the record ran it (the records before the fix
had none), with depth recurrence on and off; the preset as shipped (mask on) is reported too.
Prints a table and saves bench/results/record_fidelity.json.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import lzma
import os
import re
import subprocess
import sys
import types
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from common import print_table, save

from stages.model.gpt import GPT
from stages.train.presets import FULL_PRESETS

MIRROR = Path("/work/.mirror/openai+parameter-golf/repo")
RECORDS_DIR = "records/track_10min_16mb"
BOS = 1
# Shapes small enough for a CPU, big enough for every structure: 11 layers, GQA, partial RoPE.
TINY_ENV = {"VOCAB_SIZE": "128", "MODEL_DIM": "64", "EMBEDDING_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
            "ROPE_DIMS": "8", "BIGRAM_VOCAB_SIZE": "64", "BIGRAM_DIM": "16", "VE_DIM": "16"}
TINY_MODEL = dict(vocab_size=128, model_dim=64, num_heads=4, num_kv_heads=2, rope_dims=8,
                  bigram_hash_buckets=64, bigram_hash_dim=16, value_embed_dim=16)
# PR #401 hard-codes a rotary table built for 1024 tokens and trains at 2048: the same 1:2 ratio here.
PR401_ROPE_BUILT, SEQ_LEN = 32, 64


@dataclass(frozen=True)
class Record:
    folder: str
    """Record folder under records/track_10min_16mb."""
    env: dict = field(default_factory=dict)
    """The record's run command settings (its README), beyond the code defaults."""
    bos_mask: bool = False
    """Whether the record's SmearGate masks BOS (the fix)."""
    doc_masked: bool = False
    """Whether its attention runs document-masked (varlen), batch 1 as the record packs it."""


RECORDS = {
    "pr401": Record("2026-03-22_11L_EMA_GPTQ-lite_warmdown3500_QAT015_1.1233"),
    "pr1413": Record("2026-04-06_SP8192_QK5_LegalTTT_1.0828", {"QK_GAIN_INIT": "5.0"}),
    "pr1776": Record("2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT", {"QK_GAIN_INIT": "5.25"}),
    # #1667 ran softcap 30; seed PR #1880 changed it to 15 (docs/REFERENCE.md section 8).
    "pr1880": Record("2026-04-16_SmearGate_AttentionOutputGate_ScoreFirstTTT",
                     {"SMEAR_GATE": "1", "SMEAR_GATE_WIDTH": "12", "GATE_ATTN_OUT": "1", "GATE_ATTN_SRC": "proj",
                      "GATE_WIDTH": "12", "QK_GAIN_INIT": "5.25", "LOGIT_SOFTCAP": "15"}, doc_masked=True),
    "pr1790": Record("2026-04-16_SmearGate_AttentionOutputGate_ScoreFirstTTT",
                     {"SMEAR_GATE": "1", "SMEAR_GATE_WIDTH": "12", "GATE_ATTN_OUT": "1", "GATE_ATTN_SRC": "proj",
                      "GATE_WIDTH": "24", "QK_GAIN_INIT": "5.25"}, doc_masked=True),
    "top": Record("2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611",
                  {"SPARSE_ATTN_GATE_ENABLED": "1", "SPARSE_ATTN_GATE_SCALE": "0.5", "GATE_WINDOW": "12",
                   "SMEAR_GATE_ENABLED": "1", "GATED_ATTN_QUANT_GATE": "1"}, bos_mask=True, doc_masked=True),
}


# ---- loading a record's code ----

def record_source(mirror: Path, folder: str) -> str:
    """train_gpt.py of a record folder, unwrapped if it is an lzma + base85 self-extractor."""
    path = f"HEAD:{RECORDS_DIR}/{folder}/train_gpt.py"
    source = subprocess.run(["git", "-C", str(mirror), "show", path], check=True, capture_output=True, text=True).stdout
    wrapped = re.search(r'b85decode\("([^"]+)"\)', source)
    if wrapped is None or len(source) > 2 * len(wrapped.group(1)):
        return source
    packed = base64.b85decode(wrapped.group(1))
    try:
        return lzma.decompress(packed).decode()
    except lzma.LZMAError:
        return lzma.decompress(packed, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}]).decode()


def compile_on_this_python(source: str, filename: str):
    """Compile a record written for Python 3.12: its f-strings may reuse the outer quote inside a
    replacement field (f"{", ".join(x)}"), which 3.11 rejects; such lines get single quotes there."""
    lines = source.split("\n")
    for _ in range(100):
        try:
            return compile("\n".join(lines), filename, "exec")
        except SyntaxError as exc:
            line = lines[exc.lineno - 1]
            fixed = re.sub(r"\{([^{}]*)\}", lambda field: "{" + field.group(1).replace('"', "'") + "}", line)
            if fixed == line:
                raise
            lines[exc.lineno - 1] = fixed
    raise SyntaxError(f"{filename}: too many lines need rewriting for this Python")


def sdpa_flash(q, k, v, causal=True, **_):
    """flash-attn's (batch, seq, heads, dim) convention on PyTorch SDPA."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=causal, enable_gqa=k.size(2) != q.size(2))
    return out.transpose(1, 2)


def sdpa_flash_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=True, **_):
    """flash-attn's varlen call: (tokens, heads, dim) cut into segments at cu_seqlens (repeats allowed)."""
    bounds = cu_seqlens_q.tolist()
    pieces = [sdpa_flash(q[None, a:b], k[None, a:b], v[None, a:b], causal)[0] for a, b in zip(bounds, bounds[1:]) if b > a]
    return torch.cat(pieces)


class Permissive(types.ModuleType):
    """A stand-in module: any attribute exists; used as a decorator it returns what it decorates."""

    def __getattr__(self, name):
        if name.startswith("__"):  # no __file__, __path__...: introspection sees a plain module
            raise AttributeError(name)
        return Permissive(name)

    def __call__(self, *args, **kwargs):
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else Permissive("call")


def cpu_stand_ins() -> dict[str, types.ModuleType]:
    flash = types.ModuleType("flash_attn_interface")
    flash.flash_attn_func, flash.flash_attn_varlen_func = sdpa_flash, sdpa_flash_varlen
    modules = {"flash_attn_interface": flash}
    try:
        import triton  # noqa: F401
    except ImportError:
        for name in ("triton", "triton.language", "triton.tools", "triton.tools.tensor_descriptor"):
            modules[name] = Permissive(name)
    return modules


@contextlib.contextmanager
def patched(mapping: dict, updates: dict):
    saved = {key: mapping.get(key) for key in updates}
    mapping.update(updates)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                mapping.pop(key, None)
            else:
                mapping[key] = value


def no_compile(fn=None, **_):
    """torch.compile as a no-op: the records compile optimizer and loss helpers this never calls."""
    return fn if fn is not None else (lambda f: f)


def load_record(name: str, source: str, env: dict) -> types.ModuleType:
    """Run a record's script as a module (its main() is never called) under ``env``."""
    module = types.ModuleType(f"record_{name}")
    module.__file__ = f"<record {name}>"
    with patched(sys.modules, {**cpu_stand_ins(), module.__name__: module}), patched(os.environ, env), \
            patched(torch.__dict__, {"compile": no_compile}):
        exec(compile_on_this_python(source, module.__file__), module.__dict__)
        module.hparams = module.Hyperparameters()
    if hasattr(module, "BOS_ID"):  # the records' data loaders set it on first use
        module.BOS_ID = BOS
    return module


# ---- building both models ----

def record_model(name: str, module: types.ModuleType) -> torch.nn.Module:
    h = module.hparams
    if name == "pr401":  # the last record whose GPT takes keyword arguments
        model = module.GPT(vocab_size=h.vocab_size, num_layers=h.num_layers, model_dim=h.model_dim,
                           num_heads=h.num_heads, num_kv_heads=h.num_kv_heads, mlp_mult=h.mlp_mult,
                           tie_embeddings=h.tie_embeddings, tied_embed_init_std=h.tied_embed_init_std,
                           logit_softcap=h.logit_softcap, rope_base=h.rope_base, qk_gain_init=h.qk_gain_init,
                           bigram_vocab_size=h.bigram_vocab_size, bigram_dim=h.bigram_dim, xsa_last_n=h.xsa_last_n,
                           rope_dims=h.rope_dims, ln_scale=h.ln_scale, dtg=h.dtg_enabled, ve_enabled=h.ve_enabled,
                           ve_dim=h.ve_dim, ve_layers=h.ve_layers)
        for block in model.blocks:
            block.attn.rotary.train_seq_len = PR401_ROPE_BUILT
    else:
        model = module.GPT(h)
    return model.float().eval()


def golf_model(name: str, bos_mask: bool) -> GPT:
    preset = FULL_PRESETS[name].config.model
    tiny = {key: value for key, value in TINY_MODEL.items() if getattr(preset, key)}  # switches stay as they are
    config = replace(preset, **tiny, smear_bos_mask=bos_mask)
    if config.rope_train_len:
        config = replace(config, rope_train_len=PR401_ROPE_BUILT)
    return GPT(config).eval()


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, so that no zero-init module hides: matrices ~ 1/sqrt(fan-in),
    vectors and scalars around their init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:
                param.copy_(noise * param.shape[-1] ** -0.5)
            else:
                param.add_(0.3 * noise)


def translate(name: str, tensor: torch.Tensor, golf: GPT) -> list[tuple[str, torch.Tensor]]:
    """A record tensor as golf tensors (none for rows golf does not have)."""
    config, n = golf.config, golf.config.num_layers
    banks = {"qo_bank": ("attn.c_q", "attn.proj"), "kv_bank": ("attn.c_k", "attn.c_v")}
    if name in banks:
        first, second = banks[name]
        return [(f"blocks.{i}.{part}.weight", tensor[i + offset]) for i in range(n)
                for part, offset in ((first, 0), (second, n))]
    if name in ("mlp_up_bank", "mlp_down_bank"):
        part = "fc" if name == "mlp_up_bank" else "proj"
        return [(f"blocks.{i}.mlp.{part}.weight", tensor[i]) for i in range(n)]
    lanes = {"parallel_resid_lambdas": "lane_resid", "parallel_post_lambdas": "lane_post"}
    if name in lanes:
        return [(f"blocks.{i}.{lanes[name]}", tensor[i]) for i in range(n) if golf.blocks[i].two_lane]
    scale = re.fullmatch(r"ve_layer_scales\.(\d+)", name)
    if scale:
        return [(f"blocks.{config.value_embed_layers[int(scale.group(1))]}.attn.value_scale", tensor)]
    renames = [(r"^ve_shared\.", "value_embed."), (r"\.attn_gate_proj\.", ".gate."), (r"\.attn_gate_w$", ".gate.weight"),
               (r"^smear_gate\.weight$", "smear.gate.weight"), (r"^smear_lambda$", "smear.smear_lambda")]
    for pattern, new in renames:
        name = re.sub(pattern, new, name)
    return [(name, tensor)]


def golf_state(record: torch.nn.Module, golf: GPT) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The record's weights under golf's names and shapes, and the record tensors left unused."""
    shapes = {name: t.shape for name, t in golf.state_dict().items()}
    state, unused = {}, []
    for name, tensor in record.state_dict().items():
        pieces = {golf_name: t for golf_name, t in translate(name, tensor, golf) if golf_name in shapes}
        if not pieces:
            unused.append(name)
        state.update({golf_name: t.reshape(shapes[golf_name]) for golf_name, t in pieces.items()})
    return state, unused


# ---- comparing ----

def token_ids(seed: int, batch: int, length: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, int(TINY_ENV["VOCAB_SIZE"]), (batch, length), generator=generator)
    ids[:, 0] = BOS
    ids[:, length // 3] = BOS
    ids[:, length // 2 + 5] = BOS
    return ids


def record_logits(name: str, module, model, ids: torch.Tensor, looping: bool) -> torch.Tensor:
    if hasattr(model, "looping_active"):
        model.looping_active = looping and module.hparams.num_loops > 0
    if not RECORDS[name].doc_masked:
        return model.forward_logits(ids)
    bos = (ids[0] == BOS).nonzero().flatten().tolist()
    cu_seqlens, max_len = module._build_cu_seqlens(bos, ids.size(1), ids.device, ids.size(1), 64)
    return model.forward_logits(ids, cu_seqlens=cu_seqlens, max_seqlen=max_len)


def compare(name: str, mirror: Path, seed: int) -> dict:
    spec = RECORDS[name]
    module = load_record(name, record_source(mirror, spec.folder), {**TINY_ENV, **spec.env})
    torch.manual_seed(seed)
    record = record_model(name, module)
    randomize(record, seed)
    ids = token_ids(seed, 1 if spec.doc_masked else 2, 2 * SEQ_LEN if spec.doc_masked else SEQ_LEN)
    row = {"preset": name, "record": spec.folder}
    for label, bos_mask in (("", spec.bos_mask), ("_as_shipped", True)):
        golf = golf_model(name, bos_mask)
        state, unused = golf_state(record, golf)
        golf.load_state_dict(state, strict=True)
        diffs = []
        with torch.no_grad():
            for looping in (True, False):
                golf.looping = looping
                expected = record_logits(name, module, record, ids, looping)
                diffs.append((golf(ids) - expected).abs().max().item())
        row[f"max_abs_diff{label}"] = max(diffs)
        row["logit_abs_max"] = expected.abs().max().item()
        row["record_tensors_unused"] = unused
    row["record_bos_mask"] = spec.bos_mask
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, default=MIRROR, help="a git clone of openai/parameter-golf")
    parser.add_argument("--presets", default=",".join(RECORDS), help="comma-separated seed presets")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.mirror / "HEAD").exists() and not (args.mirror / ".git").exists():
        sys.exit(f"error: {args.mirror} is not a git clone of openai/parameter-golf (pass --mirror)")
    names = args.presets.split(",")
    unknown = sorted(set(names) - set(RECORDS))
    if unknown:
        sys.exit(f"error: no record for preset(s) {', '.join(unknown)}; known: {', '.join(RECORDS)}")
    rows = [compare(name, args.mirror, args.seed) for name in names]
    shown = [{**row, **{key: f"{row[key]:.1e}" for key in ("max_abs_diff", "max_abs_diff_as_shipped")}} for row in rows]
    print_table("golf vs the record's code (fp32, CPU, tiny shapes)", shown,
                ["preset", "max_abs_diff", "max_abs_diff_as_shipped", "logit_abs_max", "record_bos_mask"])
    print(f"saved {save('record_fidelity', rows, {'shapes': TINY_MODEL, 'seq_len': SEQ_LEN, 'seed': args.seed})}")


if __name__ == "__main__":
    main()
