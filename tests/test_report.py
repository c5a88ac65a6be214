"""golf report: on the tiny pipeline (with a plain and a TTT eval, both with receipts) every plot is in
the page as a PNG that decodes; a plot whose data is missing is one 'not available' line instead."""

from __future__ import annotations

import base64
import io
import shutil
from html.parser import HTMLParser

import pytest
from PIL import Image

from stages.evaluate.stage import run_eval
from stages.evaluate.config import EvalConfig
from stages.evaluate.ttt.config import ChunkSGDConfig, TTTConfig
from stages.results.plots import PLOTS
from stages.results.report import write_report
from stages.results.run_folder import find_stages
from stages.results.ttt_gain import document_gains
from tests.conftest import golf, rewrite_manifest

EVAL_TOKENS = 2048  # the first val document of the tiny data is 1,399 tokens: two documents
FAST_TTT = TTTConfig(mode="chunk-sgd", chunk_sgd=ChunkSGDConfig(chunk_tokens=256, lr=0.05, epochs=1, batch_seqs=2))


@pytest.fixture(scope="module")
def ttt_run(workdir, eval_dir):
    """The tiny run with a plain and a chunk-sgd eval of the same targets, each saving its receipts."""
    for name, ttt in (("eval-receipts", TTTConfig()), ("eval-ttt", FAST_TTT)):
        if not (workdir / name).exists():
            run_eval(EvalConfig(eval_tokens=EVAL_TOKENS, ttt=ttt, warmup=False), workdir / "pack", None,
                     workdir / name, token_nll=workdir / f"{name}.safetensors")
    return workdir


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            attrs = dict(attrs)
            self.images[attrs["alt"]] = attrs["src"]


def test_every_plot_is_in_the_page_and_decodes(ttt_run, tmp_path):
    page, plots = write_report(ttt_run, tmp_path / "report")
    parser = Images()
    parser.feed(page.read_text())
    assert sorted(parser.images) == sorted(name for name, _, _ in PLOTS)
    assert "not available" not in page.read_text()
    for name, src in parser.images.items():
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        png = base64.b64decode(src[len(prefix):])
        assert png == (tmp_path / "report" / f"{name}.png").read_bytes()
        image = Image.open(io.BytesIO(png))
        image.load()
        assert image.format == "PNG" and min(image.size) > 100


def test_document_gain_adds_up_to_the_two_scores(ttt_run):
    gains = document_gains(find_stages(ttt_run))
    stages = find_stages(ttt_run).folders["eval"]
    bpb = {folder.path.name: folder.manifest.metrics["val_bpb"] for folder in stages}
    assert gains.ttt_eval == "eval-ttt" and gains.plain_eval == "eval-receipts"
    assert gains.overall_bpb == pytest.approx(bpb["eval-receipts"] - bpb["eval-ttt"], abs=1e-9)
    assert len(gains.gain_bpb) > 1 and gains.doc_bytes.sum() > 0


def _copy_run(source, target, stages):
    for name in stages:
        shutil.copytree(source / name, target / name)
    return target


def test_missing_data_is_one_line_not_a_plot(ttt_run, tmp_path):
    run = _copy_run(ttt_run, tmp_path / "run", ["tokenize", "train", "pack", "eval", "eval-ttt"])
    rewrite_manifest(run / "train", lambda m: m["metrics"].update(steps=1), rehash=False)
    page, plots = write_report(run)
    missing = {plot.name: plot.missing for plot in plots if plot.png is None}
    assert set(missing) == {"loss_curves", "schedules", "quantization", "ttt_document_gain"}
    assert "edited after the stage wrote it" in missing["loss_curves"]
    assert missing["quantization"] == "no quantize folder in run"
    assert missing["ttt_document_gain"].startswith("per-target receipts missing (no plain eval saved any)")
    text = page.read_text()
    assert page == run / "report" / "report.html"
    assert text.count("<p class='na'>not available: ") == 4 and text.count("<img ") == 2


def test_not_a_ttt_run_says_so(ttt_run, tmp_path):
    run = _copy_run(ttt_run, tmp_path / "run", ["tokenize", "train", "quantize", "pack", "eval"])
    plots = {plot.name: plot for plot in write_report(run)[1]}
    assert plots["ttt_document_gain"].missing.startswith("not a TTT run")
    assert all(plot.png is not None for name, plot in plots.items() if name != "ttt_document_gain")


def test_cli(ttt_run, tmp_path):
    done = golf("report", ttt_run / "eval-ttt", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == f"report:{tmp_path / 'out' / 'report.html'} plots:{len(PLOTS)} not_available:0"
    missing = golf("report", tmp_path / "nowhere")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "no such run folder" in missing.stderr
