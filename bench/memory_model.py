"""Peak device memory of the record presets at full size, from the memory model (stages/memory.py).

    python bench/memory_model.py                          # top, pr1790, pr1880 against an 80 GB H100
    python bench/memory_model.py --presets baseline top --device-gb 141

Per preset, one row for its training step (the record's per-GPU batch) and one for its TTT mode
(document modes at the documents per batch the eval's rule picks for the device), each with its
components at the peak in GiB, the peak and whether it fits. No GPU: the real code runs on fake
tensors. Also the training step with the head and loss unfused (the logits materialized), for the
fused cross-entropy's saving. Saves bench/results/memory_model.json.
"""

from __future__ import annotations

import argparse
from unittest import mock

import torch
import torch.nn.functional as F

from common import print_table, save

from stages import memory
from stages.model import gpt
from stages.train.presets import get_preset


def unfused_head_nll(x, weight, targets, softcap=0.0, reduction="mean", chunk=0, low_rank=None):
    """The plain path: every logit at once, then the float32 cross-entropy (training: no low-rank term)."""
    logits = x @ weight.to(x.dtype).t()
    if softcap > 0:
        logits = softcap * torch.tanh(logits / softcap)
    nll = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), reduction=reduction)
    return nll.view(targets.shape) if reduction == "none" else nll


def rows_of(preset: str, reports, device_gb: float, variant: str = "") -> list[dict]:
    rows = []
    for report in reports:
        row = {"preset": preset, "step": report.name + variant, "shape": report.shape,
               "peak_gib": report.peak / memory.GIB, "fits": report.fits(device_gb), "peak_during": report.peak_phase}
        row.update({name: report.at_peak.get(name, 0) / memory.GIB for name in memory.COMPONENTS})
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["top", "pr1790", "pr1880"])
    parser.add_argument("--device-gb", type=float, default=memory.H100_GB)
    args = parser.parse_args()
    rows = []
    for name in args.presets:
        preset = get_preset(name)
        evaluation = preset.eval
        reports = memory.preset_reports(preset.config, evaluation.ttt, args.device_gb, evaluation.seq_len,
                                        evaluation.batch_windows)
        rows += rows_of(name, reports, args.device_gb)
        with mock.patch.object(gpt, "head_nll", unfused_head_nll):
            rows += rows_of(name, [memory.training_memory(preset.config)], args.device_gb, " (unfused head)")
    columns = ["preset", "step", "peak_gib", "fits", "saved activations", "logits/loss", "adapters",
               "adapter optimizer state", "gradients", "peak_during"]
    print_table(f"peak memory against {args.device_gb:g} GB (GiB)", rows, columns)
    out = save("memory_model", rows, {"presets": args.presets, "device_gb": args.device_gb})
    print(f"saved:{out.name}")


if __name__ == "__main__":
    main()
