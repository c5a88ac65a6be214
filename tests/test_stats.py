"""golf stats: the record test equals scipy's, its verdict follows the 0.005-nats / p < 0.01 rule at
its edges, bpb <-> nats round-trips, and runs that must not be compared are refused in one line."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from scipy import optimize, stats as scipy_stats

from stages.errors import GolfError
from stages.results.seeds import read_score
from stages.results.significance import ALPHA, MARGIN_NATS, bpb_from_nats, nats_from_bpb, record_test
from stages.results.stats import Baseline, seed_stats
from tests.conftest import golf, rewrite_manifest

CANDIDATE = [2.4012, 2.4031, 2.3998]
BASELINE = [2.4153, 2.4127, 2.4171, 2.4140]


def test_welch_equals_scipy_directly():
    result = record_test(CANDIDATE, BASELINE)
    shifted = [b - MARGIN_NATS for b in BASELINE]
    expected = scipy_stats.ttest_ind(CANDIDATE, shifted, equal_var=False, alternative="less")
    assert result.test == "welch"
    assert (result.t, result.p_value, result.df) == (expected.statistic, expected.pvalue, expected.df)
    assert result.improvement == pytest.approx(sum(BASELINE) / 4 - sum(CANDIDATE) / 3)
    assert result.candidate.std == pytest.approx(scipy_stats.tstd(CANDIDATE))


def test_single_baseline_value_is_a_one_sample_test():
    result = record_test(CANDIDATE, [2.4150])
    expected = scipy_stats.ttest_1samp(CANDIDATE, 2.4150 - MARGIN_NATS, alternative="less")
    assert result.test == "one-sample"
    assert (result.t, result.p_value, result.df) == (expected.statistic, expected.pvalue, 2)


def _shift_at_alpha(baseline: list[float]) -> float:
    """The candidate mean at which the Welch p-value is exactly ALPHA."""
    spread = [-0.0012, 0.0004, 0.0009]
    p = lambda offset: record_test([offset + s for s in spread], baseline).p_value - ALPHA  # noqa: E731
    return optimize.brentq(p, 2.3, 2.5, xtol=1e-12)


def test_verdict_flips_at_p_equal_alpha():
    offset = _shift_at_alpha(BASELINE)
    spread = [-0.0012, 0.0004, 0.0009]
    better = record_test([offset - 1e-7 + s for s in spread], BASELINE)
    worse = record_test([offset + 1e-7 + s for s in spread], BASELINE)
    assert better.p_value < ALPHA < worse.p_value
    assert better.significant and not worse.significant
    assert "rule met" in better.verdict() and "rule not met" in worse.verdict()


def test_an_improvement_under_the_margin_never_passes_however_tight():
    base = [3.0000, 3.0001, 2.9999]
    tight = [3.0 - 0.0049 + d for d in (-1e-6, 0.0, 1e-6)]  # 0.0049 better, almost no spread
    assert not record_test(tight, base).significant
    exact = [3.0 - MARGIN_NATS + d for d in (-1e-6, 0.0, 1e-6)]  # exactly the margin: t = 0, p = 0.5
    assert record_test(exact, base).p_value == pytest.approx(0.5, abs=1e-3)
    clear = [3.0 - 0.02 + d for d in (-1e-4, 0.0, 1e-4)]
    assert record_test(clear, base).significant


def test_bpb_nats_round_trip():
    for bpb, per_token in [(1.2244, 3.727), (0.0, 2.5), (1.0813, 2.53133)]:
        assert bpb_from_nats(nats_from_bpb(bpb, per_token), per_token) == pytest.approx(bpb, rel=1e-15, abs=0)
    assert nats_from_bpb(1.0, 1.0) == math.log(2)
    assert nats_from_bpb(0.0019, 3.727) == pytest.approx(0.0049, abs=1e-4)  # REFERENCE: 0.005 nats ~ 0.0019 bpb


def test_the_eval_manifest_converts_its_own_scores(eval_dir):
    score = read_score(eval_dir)
    assert score.bytes_source == "bytes_scored / tokens_scored"
    assert nats_from_bpb(score.val_bpb, score.bytes_per_token) == pytest.approx(score.val_loss, rel=1e-9)


def test_fewer_than_two_seeds_is_refused():
    with pytest.raises(GolfError, match="at least 2 candidate seeds"):
        record_test([2.4], BASELINE)


@pytest.fixture
def seeds(eval_dir, tmp_path):
    """Three copies of the tiny eval with known val_loss values (content hash kept valid)."""
    folders = []
    for index, loss in enumerate(CANDIDATE):
        folder = tmp_path / f"seed{index}" / "eval"
        shutil.copytree(eval_dir, folder)
        per_token = read_score(eval_dir).bytes_per_token
        rewrite_manifest(folder, lambda m, loss=loss: m["metrics"].update(
            val_loss=loss, val_bpb=bpb_from_nats(loss, per_token)))
        folders.append(folder)
    return folders


def test_runs_against_baseline_numbers(seeds):
    result = seed_stats([f.parent for f in seeds], Baseline.choose(nats=BASELINE))
    assert [s.val_loss for s in result.candidates] == CANDIDATE
    assert result.test.p_value == record_test(CANDIDATE, BASELINE).p_value
    converted = seed_stats(seeds, Baseline.choose(bpb=[bpb_from_nats(v, result.bytes_per_token) for v in BASELINE]))
    assert converted.baseline_nats == pytest.approx(BASELINE, rel=1e-12)


def test_runs_on_other_val_data_are_refused(seeds):
    rewrite_manifest(seeds[1], lambda m: m["lineage"].update(tokenizer_sha256="0" * 64))
    with pytest.raises(GolfError, match="disagree on tokenizer_sha256"):
        seed_stats(seeds, Baseline.choose(nats=BASELINE))
    rewrite_manifest(seeds[1], lambda m: m["lineage"].update(tokenizer_sha256=json.loads(
        (seeds[0] / "manifest.json").read_text())["lineage"]["tokenizer_sha256"]))
    first_file = lambda m: next(iter(m["inputs"]["data"]["files"].values()))  # noqa: E731
    rewrite_manifest(seeds[2], lambda m: first_file(m).update(sha256="f" * 64))
    with pytest.raises(GolfError, match="read different data files"):
        seed_stats(seeds, Baseline.choose(nats=BASELINE))
    rewrite_manifest(seeds[0], lambda m: m["metrics"].update(tokens_scored=m["metrics"]["tokens_scored"] - 1))
    with pytest.raises(GolfError, match="scored different targets"):
        seed_stats(seeds[:2], Baseline.choose(nats=BASELINE))


def test_unverified_or_repeated_folders_are_refused(seeds):
    rewrite_manifest(seeds[0], lambda m: m["metrics"].update(val_loss=1.0), rehash=False)
    with pytest.raises(GolfError, match="edited after the stage wrote it"):
        seed_stats(seeds, Baseline.choose(nats=BASELINE))
    rewrite_manifest(seeds[0], lambda m: m.update(status="failed", failure="diverged"))
    with pytest.raises(GolfError, match="stage failed"):
        read_score(seeds[0])
    (seeds[1] / "log.txt").write_text("changed\n")
    with pytest.raises(GolfError, match="log.txt"):
        read_score(seeds[1])
    with pytest.raises(GolfError, match="same eval folder"):
        seed_stats([seeds[2], seeds[2].parent], Baseline.choose(nats=BASELINE))
    with pytest.raises(GolfError, match="one way"):
        Baseline.choose(runs=[seeds[2]], nats=BASELINE)


def test_cli_prints_table_verdict_and_json(seeds, tmp_path):
    out = tmp_path / "stats.json"
    done = golf("stats", *[f.parent for f in seeds], "--baseline", seeds[0], "--baseline", seeds[1], "--json", out)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr  # a baseline seed is a candidate too
    done = golf("stats", *[f.parent for f in seeds], *[a for v in BASELINE for a in ("--baseline-nats", v)],
                "--json", "stats.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "per-seed scores" in done.stdout and "seed0/eval" in done.stdout
    verdict = [line for line in done.stdout.splitlines() if line.startswith("verdict:")]
    assert verdict == [f"verdict:{record_test(CANDIDATE, BASELINE).verdict()}"]
    saved = json.loads(out.read_text())
    assert saved["test"]["p_value"] == record_test(CANDIDATE, BASELINE).p_value
    assert str(tmp_path) not in out.read_text()
    one = golf("stats", seeds[0], "--baseline-nats", "2.5")
    assert one.returncode == 1 and one.stderr.strip().startswith("error:") and one.stderr.count("\n") == 1


def test_without_a_baseline_only_the_means(seeds):
    result = seed_stats(seeds[:1], Baseline.choose())
    assert result.test is None and result.verdict().startswith("no baseline given")
    assert all("partial" in note for note in result.notes)  # the fixture scored a 1,024-token prefix
    assert result.candidate_nats.mean == CANDIDATE[0] and result.candidate_nats.std is None
