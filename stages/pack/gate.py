"""The size gate: an artifact's real bytes (and a submission's code bytes) against the limit.

``SizeVerdict`` is the gate's answer to the byte; ``check_artifact`` is `golf pack --check FILE`:
well-formed, its code golf's own, and its size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..artifact.verify import read_artifact, vouch_for_code
from ..errors import GolfError
from ..progress import Reporter
from .config import SIZE_LIMIT

SIZE_EXIT_CODE = 3


@dataclass(frozen=True)
class SizeVerdict:
    """PASS at or under the limit, to the byte."""

    bytes_total: int
    """The bytes counted."""
    limit: int
    """The limit in bytes."""

    @property
    def margin(self) -> int:
        """Bytes left under the limit (negative when over)."""
        return self.limit - self.bytes_total

    @property
    def passed(self) -> bool:
        return self.bytes_total <= self.limit

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def as_dict(self) -> dict:
        """The manifest's and the log line's form."""
        return {"bytes_total": self.bytes_total, "limit": self.limit, "margin": self.margin, "verdict": self.verdict}

    def over_limit_message(self, counted: str = "artifact") -> str:
        """The one-line reason of a FAIL; ``counted`` names what the bytes are."""
        return (f"{counted} is {self.bytes_total:,} bytes, over the {self.limit:,}-byte limit "
                f"by {-self.margin:,}")


@dataclass(frozen=True)
class SizeCheck:
    """What `golf pack --check` found: the verdict and the facts printed around it."""

    verdict: SizeVerdict
    """The size verdict of everything counted."""
    counted: str
    """What the bytes are, for the over-limit line: 'artifact' or 'code + artifact'."""
    counts: dict = field(default_factory=dict)
    """Fields before the verdict: the bytes of each file counted (and, for a submission, whether
    train_gpt.py is as submitted); empty for a lone artifact."""
    code_check: dict = field(default_factory=dict)
    """Fields after the verdict: the artifact's code check (``CodeCheck.record``)."""

    def as_dict(self) -> dict:
        return {**self.counts, **self.verdict.as_dict(), **self.code_check}

    def over_limit_message(self) -> str:
        return self.verdict.over_limit_message(self.counted)


def check_artifact(path: str | Path, limit: int = SIZE_LIMIT, trust_code: bool = False,
                   reporter: Reporter | None = None, code_file: str | Path | None = None) -> SizeCheck:
    """The gate on an existing artifact file: well-formed, its code golf's own, real bytes against the limit.

    Foreign code is refused (a one-line error naming the files) unless ``trust_code``; the
    check records the code check either way. ``code_file`` (a submission's train_gpt.py) is
    shipped beside the artifact: its real bytes count toward the limit too.
    """
    artifact = read_artifact(path)
    code = vouch_for_code(artifact, trust_code, reporter or Reporter())
    if code_file is None:
        return SizeCheck(SizeVerdict(len(artifact.data), limit), "artifact", code_check=code.record(trust_code))
    if not Path(code_file).is_file():
        raise GolfError(f"{code_file}: no such code file")
    counts = {"bytes_artifact": len(artifact.data), "bytes_code_file": Path(code_file).stat().st_size}
    return SizeCheck(SizeVerdict(sum(counts.values()), limit), "code + artifact", counts, code.record(trust_code))
