"""Eval runs only code it can vouch for: every tampering with an artifact's code is refused by
`golf eval`, `golf pack --check` and `golf inspect`, unless --trust-artifact-code (then with a
warning and a manifest record); malformed headers and code sections are one-line errors.

Artifacts are crafted from the tiny pipeline's real one: read the container, edit, rewrite it
with the container writer.
"""

import copy
import json
import lzma
import shutil
import struct

import pytest

from stages.artifact.bundle import bundle_id
from stages.artifact.codecs import decompress
from stages.artifact.encode import compress
from stages.artifact.container import MAGIC, read_container, write_container
from stages.artifact.schema import encode_code
from stages.artifact.verify import installed_sources, read_artifact, stage_code_report
from stages.contract.hashing import sha256_file
from stages.contract.stage_dir import StageDir
from stages.errors import GolfError
from stages.evaluate.stage import run_eval
from stages.evaluate.config import EvalConfig
from stages.pack.gate import check_artifact
from stages.progress import Reporter

from .conftest import golf, rewrite_manifest
from .test_cli import assert_one_line_error

SCORING = "stages/scoring/scorer.py"
HONEST_NLL = "scored.nll.double().sum().item(),"
# Score a prefix only: the trust test compares two evals, and any prefix shows the halving.
EVAL_TOKENS = 1024


class Parts:
    """An artifact taken apart: its header (without the section list), sections, codecs and code."""

    def __init__(self, data: bytes):
        header, self.sections = read_container(data)
        self.codecs = {entry["name"]: entry["codec"] for entry in header.pop("sections")}
        self.header = header
        self.files = json.loads(decompress(self.sections["code"], self.codecs["code"]))

    def write(self, path, files: dict | None = None, rehash: bool = True, code: bytes | None = None):
        """Rewrite with the container writer; ``files`` replaces the code (``rehash``: and the header's hash)."""
        header, sections = copy.deepcopy(self.header), dict(self.sections)
        if files is not None:
            sections["code"] = compress(encode_code(files), self.codecs["code"])
            if rehash:
                header["code"]["bundle_sha256"] = bundle_id(files)
        if code is not None:
            sections["code"] = code
        path.write_bytes(write_container(header, [(name, self.codecs[name], sections[name]) for name in sections]))
        return path


@pytest.fixture(scope="module")
def parts(pack_dir):
    return Parts(StageDir(pack_dir).file("artifact").read_bytes())


def halving(files: dict) -> dict:
    """The shipped scoring, edited to count half of every NLL: half the true bpb."""
    assert HONEST_NLL in files[SCORING]
    return {**files, SCORING: files[SCORING].replace(HONEST_NLL, HONEST_NLL[:-1] + " / 2,")}


def tampered(parts: Parts, case: str, path):
    """The artifact of one tampering case, written to ``path``."""
    files = dict(parts.files)
    if case == "edited":  # (a) a shipped file edited, the header's bundle hash updated to match
        return parts.write(path, halving(files))
    if case == "edited-hash-kept":  # (b) edited without updating the hash
        return parts.write(path, halving(files), rehash=False)
    if case == "bootstrap-emptied":  # (c) the old loader check skipped with "bootstrap": [], the loader edited
        parts = copy.copy(parts)
        parts.header = {**parts.header, "code": {**parts.header["code"], "bootstrap": []}}
        loader = "stages/artifact/bundle.py"
        return parts.write(path, {**files, loader: files[loader] + "\nPACKAGE = 'stages'  # looks harmless\n"})
    if case == "extra":  # (d) an extra file
        return parts.write(path, {**files, "stages/evil.py": "import os\n"})
    if case == "removed":  # (e) a file removed
        del files["stages/model/attention.py"]
        return parts.write(path, files)
    if case == "entry-elsewhere":  # (f) the header's entry pointing elsewhere
        parts = copy.copy(parts)
        parts.header = {**parts.header, "code": {**parts.header["code"], "entry": "stages/model/gpt.py"}}
        return parts.write(path)
    raise AssertionError(case)


# case -> what the refusal must name
TAMPERINGS = {
    "edited": f"changed: {SCORING}",
    "edited-hash-kept": "does not match the header's bundle_sha256",
    "bootstrap-emptied": "changed: stages/artifact/bundle.py",
    "extra": "extra: stages/evil.py",
    "removed": "missing: stages/model/attention.py",
    "entry-elsewhere": "code.entry is 'stages/model/gpt.py'",
}
# Integrity, not trust: refused even with --trust-artifact-code.
BROKEN = ("edited-hash-kept", "entry-elsewhere")


def as_pack_folder(pack_dir, artifact, folder):
    """A copy of the pack folder holding ``artifact``, its manifest updated so only the code check can object."""
    shutil.copytree(pack_dir, folder)
    shutil.copy(artifact, folder / "model.golf")
    rewrite_manifest(folder, lambda m: m["outputs"]["artifact"].update(
        sha256=sha256_file(folder / "model.golf"), bytes=(folder / "model.golf").stat().st_size))
    return folder


def eval_metrics(out) -> dict:
    return json.loads((out / "manifest.json").read_text())["metrics"]


# Every tampering is refused by eval, pack --check and inspect


@pytest.mark.parametrize("case", TAMPERINGS)
def test_tampering_is_refused_by_eval_check_and_inspect(parts, pack_dir, data_dir, tmp_path, case):
    artifact = tampered(parts, case, tmp_path / "model.golf")
    with pytest.raises(GolfError, match=TAMPERINGS[case]):
        run_eval(EvalConfig(), artifact, data_dir, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()
    with pytest.raises(GolfError, match=TAMPERINGS[case]):
        check_artifact(artifact)
    _, problem = stage_code_report(StageDir(as_pack_folder(pack_dir, artifact, tmp_path / "pack")))
    assert problem is not None and TAMPERINGS[case] in problem


@pytest.mark.parametrize("case", BROKEN)
def test_trust_does_not_excuse_broken_integrity(parts, data_dir, tmp_path, case):
    artifact = tampered(parts, case, tmp_path / "model.golf")
    with pytest.raises(GolfError, match=TAMPERINGS[case]):
        run_eval(EvalConfig(), artifact, data_dir, tmp_path / "eval", trust_code=True)
    with pytest.raises(GolfError, match=TAMPERINGS[case]):
        check_artifact(artifact, trust_code=True)


def test_foreign_refusal_names_the_files_and_the_opt_in(parts, pack_dir, data_dir, tmp_path):
    artifact = tampered(parts, "edited", tmp_path / "model.golf")
    result = golf("eval", artifact, "--data", data_dir, "--out", tmp_path / "eval")
    assert_one_line_error(result, f"changed: {SCORING}", "--trust-artifact-code")
    assert not (tmp_path / "eval").exists()
    result = golf("pack", "--check", artifact)
    assert_one_line_error(result, f"changed: {SCORING}", "--trust-artifact-code")
    folder = as_pack_folder(pack_dir, artifact, tmp_path / "pack")
    result = golf("inspect", folder)
    assert result.returncode == 1 and "verified:False" in result.stdout
    assert "golf_own:False" in result.stdout
    assert any(line.startswith("problem:pack") and SCORING in line for line in result.stdout.splitlines())


def test_golf_own_artifact_passes_every_check(pack_dir, tmp_path):
    _, problem = stage_code_report(StageDir(pack_dir))
    assert problem is None
    assert check_artifact(StageDir(pack_dir).file("artifact")).as_dict()["code_matches_installed"] is True


# The explicit opt-in


def test_trusted_foreign_code_runs_with_a_warning_and_is_recorded(parts, pack_dir, data_dir, tmp_path):
    honest = run_eval(EvalConfig(eval_tokens=EVAL_TOKENS), StageDir(pack_dir).file("artifact"), data_dir,
                      tmp_path / "honest", reporter=Reporter()).metrics
    assert honest["code_matches_installed"] is True and honest["code_trusted_foreign"] is False
    artifact = tampered(parts, "edited", tmp_path / "model.golf")
    out = tmp_path / "eval"
    result = golf("eval", artifact, "--data", data_dir, "--out", out, "--trust-artifact-code",
                  "--set", f"eval_tokens={EVAL_TOKENS}")
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stdout.splitlines() if line.startswith("warning:"))
    assert f"changed:{SCORING}" in warning
    metrics = eval_metrics(out)
    assert metrics["code_matches_installed"] is False and metrics["code_trusted_foreign"] is True
    shipped = read_artifact(artifact).header["code"]["bundle_sha256"]
    assert metrics["code_sha256"] == bundle_id(halving(parts.files)) == shipped
    assert metrics["code_installed_sha256"] == bundle_id(installed_sources()) == honest["code_sha256"]
    assert metrics["val_bpb"] == pytest.approx(honest["val_bpb"] / 2, rel=1e-9)  # the shipped code did score
    result = golf("inspect", out)
    assert result.returncode == 1 and "code_trusted_foreign:True" in result.stdout
    assert any(line.startswith("problem:eval") and "not vouch" in line for line in result.stdout.splitlines())


def test_pack_check_passes_trusted_foreign_code_with_a_warning(parts, tmp_path):
    artifact = tampered(parts, "edited", tmp_path / "model.golf")
    result = golf("pack", "--check", artifact, "--trust-artifact-code")
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("warning:") for line in result.stdout.splitlines())
    assert "code_matches_installed:False" in result.stdout and "code_trusted_foreign:True" in result.stdout


# Malformed headers and code sections: one line, never a traceback


def edit_header(edit):
    def apply(parts: Parts, path):
        parts = copy.copy(parts)
        parts.header = copy.deepcopy(parts.header)
        edit(parts.header)
        return parts.write(path)
    return apply


def with_code(payload_of):
    def apply(parts: Parts, path):
        return parts.write(path, code=payload_of(parts))
    return apply


def with_files(files_of):
    def apply(parts: Parts, path):
        return parts.write(path, files_of(parts.files))
    return apply


def unknown_section_codec(parts: Parts, path):
    parts = copy.copy(parts)
    parts.codecs = {**parts.codecs, "weights.attention": "xz"}
    return parts.write(path)


def raw_sections_list(parts: Parts, path):
    """A header whose section list the container writer would never write."""
    header = {**parts.header, "sections": [{"name": "code", "codec": "lzma"}]}
    packed = lzma.compress(json.dumps(header).encode(), format=lzma.FORMAT_XZ)
    path.write_bytes(MAGIC + struct.pack("<I", len(packed)) + packed)
    return path


MALFORMED = {
    "missing key": (edit_header(lambda h: h.pop("model_config")), "header has no 'model_config'"),
    "wrong type": (edit_header(lambda h: h.update(train_seq_len="64")), "train_seq_len is not an integer"),
    "bool for int": (edit_header(lambda h: h["lineage"].update(vocab_size=True)), "vocab_size is not an integer"),
    "not an object": (edit_header(lambda h: h.update(lineage=[])), "lineage is not a JSON object"),
    "code key missing": (edit_header(lambda h: h["code"].pop("bundle_sha256")), "code has no 'bundle_sha256'"),
    "tensor shape": (edit_header(lambda h: h["weights"]["tensors"][0].update(shape=["8"])), "shape is not a list of sizes"),
    "tensor dtype": (edit_header(lambda h: h["weights"]["tensors"][0].update(dtype="bfloat16")), "dtype 'bfloat16'"),
    "tensor stream": (edit_header(lambda h: h["weights"]["tensors"][0].update(stream="lost")), "stream 'lost'"),
    "unknown code codec": (edit_header(lambda h: h["code"].update(codec="xz")), "unknown codec 'xz'"),
    "unknown section codec": (unknown_section_codec, "unknown codec 'xz'"),
    "sections entry": (raw_sections_list, "sections[0] has no 'bytes'"),
    "code not compressed": (with_code(lambda p: b"plain bytes"), "code section is not lzma-compressed"),
    "code not json": (with_code(lambda p: compress(b"not json", "lzma")), "code section is not UTF-8 JSON"),
    "code a list": (with_code(lambda p: compress(b"[1, 2]", "lzma")), "not a JSON object of {path: source}"),
    "code not str": (with_code(lambda p: compress(b'{"stages/runtime.py": 1}', "lzma")), "{path: source}"),
    "code path outside": (with_files(lambda f: {**f, "../outside.py": ""}), "outside stages/: '../outside.py'"),
    "no runtime": (with_files(lambda f: {k: v for k, v in f.items() if k != "stages/runtime.py"}),
                   "ships no stages/runtime.py"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_artifact_is_a_one_line_error(parts, tmp_path, case):
    make, message = MALFORMED[case]
    artifact = make(parts, tmp_path / "model.golf")
    with pytest.raises(GolfError, match=r"model\.golf: ") as error:
        read_artifact(artifact)
    assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(GolfError, match="model.golf: "):
        check_artifact(artifact, trust_code=True)


def test_malformed_artifact_through_the_cli(parts, data_dir, tmp_path):
    make, message = MALFORMED["missing key"]
    artifact = make(parts, tmp_path / "header.golf")
    assert_one_line_error(golf("eval", artifact, "--data", data_dir, "--out", tmp_path / "eval",
                               "--trust-artifact-code"), message)
    make, message = MALFORMED["code not json"]
    assert_one_line_error(golf("pack", "--check", make(parts, tmp_path / "code.golf")), message)


def test_weights_that_do_not_decode_are_a_one_line_error(parts, data_dir, tmp_path):
    parts = copy.copy(parts)
    parts.sections = {**parts.sections, "weights.mlp": compress(b"short", parts.codecs["weights.mlp"])}
    artifact = parts.write(tmp_path / "model.golf")
    with pytest.raises(GolfError, match="model does not rebuild.*weights.mlp ends inside tensor"):
        run_eval(EvalConfig(), artifact, data_dir, tmp_path / "eval")


# An artifact of an older format: refused in one line that says what to do


OLDER_FORMAT = ("packed by an older golf (artifact format 2; this golf reads format 3): "
                "repack it with golf pack on its quantize folder")


def format_2_artifact(parts: Parts, path):
    """The artifact as golf wrote it before format 3: magic GOLFPK02, the header's ``format: 2``,
    each tensor entry naming its section's ``group``."""
    header = copy.deepcopy(parts.header)
    header["format"] = 2
    for entry in header["weights"]["tensors"]:
        entry["group"] = entry.pop("stream")
    data = write_container(header, [(name, parts.codecs[name], parts.sections[name]) for name in parts.sections])
    path.write_bytes(b"GOLFPK02" + data[len(MAGIC):])
    return path


def test_a_format_2_artifact_is_refused_with_what_to_do(parts, data_dir, tmp_path):
    artifact = format_2_artifact(parts, tmp_path / "old.golf")
    with pytest.raises(GolfError) as error:
        read_artifact(artifact)
    assert str(error.value) == f"{artifact}: {OLDER_FORMAT}"
    assert_one_line_error(golf("eval", artifact, "--data", data_dir, "--out", tmp_path / "eval"), OLDER_FORMAT)
    assert not (tmp_path / "eval").exists()
    assert_one_line_error(golf("pack", "--check", artifact), OLDER_FORMAT)
