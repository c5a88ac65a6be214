"""The lineage walk: from an eval or pack folder up to the quantize, train and tokenize folders it was made from."""

import json

import pytest

from stages.contract.lineage import Lineage, lineage_folder
from stages.contract.manifest import MANIFEST_NAME
from stages.contract.stage_dir import StageDir, StageWriter
from stages.errors import GolfError

LINEAGE = {"tokenizer_sha256": "abc", "vocab_size": 3}


def write_stage(path, stage, inputs=()):
    """A finished stage folder with one output and the given (role, upstream folder) inputs."""
    with StageWriter(path, stage) as writer:
        writer.path("out.bin").write_bytes(stage.encode())
        writer.add_output("out", writer.path("out.bin"))
        for role, upstream in inputs:
            writer.add_input(role, StageDir(upstream))
        writer.commit({}, LINEAGE, {})
    return StageDir(path)


@pytest.fixture
def run(tmp_path):
    """tokenize -> train -> quantize -> pack -> eval, linked by the roles the stages record."""
    tokenize = write_stage(tmp_path / "tokenize", "tokenize")
    train = write_stage(tmp_path / "train", "train", [("data", tokenize.path)])
    quantize = write_stage(tmp_path / "quantize", "quantize", [("checkpoint", train.path), ("data", tokenize.path)])
    pack = write_stage(tmp_path / "pack", "pack", [("quantized", quantize.path)])
    evaluation = write_stage(tmp_path / "eval", "eval", [("artifact", pack.path), ("data", tokenize.path)])
    return {folder.stage: folder for folder in (tokenize, train, quantize, pack, evaluation)}


@pytest.mark.parametrize("start", ["eval", "pack"])
def test_lineage_of_opens_every_folder_up_to_tokenize(run, start):
    lineage = Lineage.of(run[start])
    assert [folder.path for folder in (lineage.pack, lineage.quantize, lineage.train, lineage.tokenize)] == \
        [run[stage].path for stage in ("pack", "quantize", "train", "tokenize")]


@pytest.mark.parametrize("start, stage", [("eval", "train"), ("pack", "quantize"), ("quantize", "tokenize"),
                                          ("train", "train")])
def test_lineage_folder_walks_only_as_far_as_asked(run, start, stage):
    assert lineage_folder(run[start], stage).path == run[stage].path


def test_a_missing_link_is_one_line_naming_the_folder_that_lacks_it(run, tmp_path):
    pack = write_stage(tmp_path / "pack-alone", "pack")
    with pytest.raises(GolfError, match=r"pack-alone: records no 'quantized' input$"):
        Lineage.of(pack)


def test_nothing_lies_above_tokenize(run):
    with pytest.raises(GolfError, match="no train folder above this tokenize folder"):
        lineage_folder(run["tokenize"], "train")


def test_a_bare_artifact_file_has_no_lineage(run, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "model.golf").write_bytes(b"x")
    with StageWriter(tmp_path / "eval-bare", "eval") as writer:
        writer.add_file_input("artifact", "artifact", loose, {"artifact": loose / "model.golf"})
        writer.commit({}, LINEAGE, {})
    with pytest.raises(GolfError, match=f"no {MANIFEST_NAME}"):
        lineage_folder(StageDir(tmp_path / "eval-bare"), "pack")


def test_an_edited_upstream_manifest_stops_the_walk(run):
    manifest = run["train"].path / MANIFEST_NAME
    edited = json.loads(manifest.read_text())
    edited["metrics"] = {"forged": 1}
    manifest.write_text(json.dumps(edited))
    with pytest.raises(GolfError, match="edited after the stage wrote it"):
        Lineage.of(run["eval"])
    assert lineage_folder(run["eval"], "quantize").path == run["quantize"].path  # the links below it still open
