"""`golf pack`: quantized weights + the code that evaluates them -> one artifact file, gated on size.

The artifact (``model.golf``) holds a compressed JSON header, the shipped code
(``stages/runtime.py`` and everything it imports, plus the container reader and bundle importer)
and the weights sections, one per stream (``stages/artifact/streams.py``: with ``streams="type"``,
the default, every matrix's int8 codes in ``weights.codes``, coded with ``codes_codec``, golf's
order-0 coder 'rans' by default; the rest by tensor group, coded with ``codec``). The format and
its writer are ``stages/artifact``'s: this stage chooses the codecs, levels and layout from its
config (``PackConfig.layout``/``codecs``), compares codecs on request (``compare.py``), calls the
writer and gates the size (``gate.py``). Its size is the real byte count of that file. Over the
limit, nothing is written and the command exits non-zero with a breakdown, so CI can gate on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..artifact.quantized import QuantizedMetadata
from ..artifact.writer import artifact_parts, assemble_artifact, weight_payloads
from ..config import to_dict
from ..contract.stage_dir import StageDir, StageWriter, atomic_write_bytes
from ..errors import GolfError
from ..model.checkpoint import load_tensors_and_metadata
from ..progress import Reporter
from .compare import compare_codecs, measure_codecs
from .config import PackConfig
from .gate import SIZE_EXIT_CODE, SizeVerdict

ARTIFACT_FILE = "model.golf"


def run_pack(config: PackConfig, quantize_dir: str | Path, out_dir: str | Path, force: bool = False,
             reporter: Reporter | None = None, compare: bool = False,
             show_comparison: Callable[[dict], None] | None = None):
    """Pack the quantized weights; with ``compare``, first measure every codec per stream.

    ``show_comparison`` receives the comparison rows before the size gate runs (the CLI draws
    them as a table), so they are shown even when the artifact turns out too big.
    """
    reporter = reporter or Reporter()
    quant = StageDir(quantize_dir, "quantize")
    with StageWriter(out_dir, "pack", force, reporter, {"the quantize folder": quant.path}) as writer:
        with writer.ledger.measure("compress", note="packing happens after training: outside both budgets"):
            tensors, metadata = load_tensors_and_metadata(quant.file("quantized"))
            quantized = QuantizedMetadata.from_metadata(metadata, str(quant.file("quantized")))
            parts = artifact_parts(tensors, quantized, config.layout())
            measured = comparison = None
            if compare:
                measured = measure_codecs(parts)
                comparison = compare_codecs(parts, measured)
                _report_comparison(comparison, reporter, show_comparison)
            data, breakdown = assemble_artifact(parts, weight_payloads(parts, config.codecs(), measured))
        verdict = SizeVerdict(len(data), config.limit)
        reporter.log(stage="pack", **breakdown.flat(), limit=config.limit, margin=verdict.margin,
                     verdict=verdict.verdict)
        if not verdict.passed:
            raise GolfError(
                f"{verdict.over_limit_message()} (code {breakdown.bytes_code:,}, weights "
                f"{breakdown.bytes_weights:,}, header {breakdown.bytes_header:,}); nothing written",
                exit_code=SIZE_EXIT_CODE,
            )
        atomic_write_bytes(writer.path(ARTIFACT_FILE), data)
        writer.add_input("quantized", quant)
        writer.add_output("artifact", writer.path(ARTIFACT_FILE))
        metrics = {**breakdown.as_dict(), **verdict.as_dict(), **({"compare": comparison} if comparison else {})}
        manifest = writer.commit(to_dict(config), dict(quant.lineage), metrics, reporter.text())
    return manifest


def _report_comparison(rows: dict[str, dict], reporter: Reporter, show: Callable[[dict], None] | None) -> None:
    for row, sizes in rows.items():
        reporter.log(compare=row, **sizes)
    if show is not None:
        show(rows)
