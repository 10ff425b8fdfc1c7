"""Write the report of a mutmut run of metering/core (``make mutation``) as Markdown.

Reads mutmut's results under ``mutants/`` and the accepted equivalent mutants of
``mutation/equivalent.toml``; prints the score per module, every survivor not accepted
(with its diff: each is a gap in the tests or a new equivalent to justify), and the accepted
ones with their reasons. Run from the repository root after ``mutmut run``:

    python mutation/report.py --seconds 1234 > mutation/report.md
"""

import argparse
import json
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

CORE = Path("metering/core")
MUTANTS = Path("mutants")
EQUIVALENT = Path("mutation/equivalent.toml")

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
STATUS.update({36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout"})
STATUS.update({37: "caught by type check", -11: "segfault", -9: "segfault"})
"""mutmut 3's exit codes (``mutmut.stats.status_by_exit_code``); anything else is suspicious.
A timeout counts as killed (the mutant made the tests loop), as mutmut's own score does."""


@dataclass(frozen=True)
class Accepted:
    mutant: str
    change: str
    """Text of the mutated line: the entry applies only while the mutant still makes it."""
    reason: str


def load_accepted() -> dict[str, Accepted]:
    entries = tomllib.loads(EQUIVALENT.read_text(encoding="utf-8"))["equivalent"]
    return {e["mutant"]: Accepted(e["mutant"], e["change"], e["reason"]) for e in entries}


def results() -> dict[str, dict[str, str]]:
    """module file name -> mutant name -> status."""
    found: dict[str, dict[str, str]] = {}
    for meta in sorted((MUTANTS / CORE).glob("*.py.meta")):
        codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        if not codes:
            continue
        found[meta.name.removesuffix(".meta")] = {
            name: "not checked" if code is None else STATUS.get(code, "suspicious")
            for name, code in codes.items()
        }
    return found


def diff(module: str, mutant: str) -> str:
    from mutmut.mutation.diff_apply import get_diff_for_mutant  # reads pyproject's config

    try:
        return get_diff_for_mutant(mutant, path=CORE / module)
    except Exception as error:  # a mutant mutmut cannot show any more: say so, go on
        return f"(no diff: {type(error).__name__}: {error})"


def changed_lines(text: str, signs: str = "+") -> str:
    """The lines of a diff that start with one of ``signs`` (file headers left out)."""
    return "\n".join(
        line
        for line in text.splitlines()
        if line[:1] in signs and not line.startswith(("+++", "---"))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, help="how long the mutmut run took")
    parser.add_argument("--commit", default="", help="the commit that was tested")
    args = parser.parse_args()
    accepted = load_accepted()
    by_module = results()
    if not by_module:
        sys.exit("no mutmut results under mutants/: run `make mutation`")

    open_survivors: list[tuple[str, str]] = []
    accepted_seen: list[tuple[Accepted, str]] = []
    rows: list[str] = []
    totals: Counter[str] = Counter()
    for module, statuses in by_module.items():
        counts: Counter[str] = Counter()
        for mutant, status in sorted(statuses.items()):
            if status in ("killed", "timeout", "caught by type check"):
                counts["killed"] += 1
                continue
            if status == "not checked":
                counts[status] += 1
                continue
            text = diff(module, mutant)
            entry = accepted.get(mutant)
            if status == "survived" and entry is not None and entry.change in changed_lines(text):
                counts["equivalent"] += 1
                accepted_seen.append((entry, text))
            else:
                counts[status] += 1
                open_survivors.append((f"{mutant}: {status}", text))
        counts["all"] = len(statuses)
        totals.update(counts)
        rows.append(_row(module, counts))
    rows.append(_row("**all of metering/core**", totals))

    out = ["# Mutation testing of metering/core", ""]
    out += [
        "Written by `make mutation` (mutmut 3, every mutant of `metering/core/*.py`, killed by",
        "`tests/unit` alone with hypothesis derandomized). Score = killed / (mutants - accepted",
        "equivalents); a timeout counts as killed. Edit `mutation/equivalent.toml`, not this file.",
        "",
    ]
    if args.commit:
        out.append(f"Commit: `{args.commit}`.")
    if args.seconds is not None:
        out.append(f"The run took {args.seconds // 60} min {args.seconds % 60} s.")
    out += ["", "| module | mutants | killed | accepted equivalent | survived | other | score |"]
    out += ["|---|---:|---:|---:|---:|---:|---:|", *rows, ""]
    out += [f"## Survivors not accepted ({len(open_survivors)})", ""]
    if not open_survivors:
        out += ["None.", ""]
    for title, text in open_survivors:
        out += [f"### {title}", "", "```diff", text, "```", ""]
    out += [f"## Accepted equivalent mutants ({len(accepted_seen)})", ""]
    for entry, text in accepted_seen:
        out += [f"- `{entry.mutant}`: {entry.reason}", "", "  ```diff"]
        out += [f"  {line}" for line in changed_lines(text, "-+").splitlines()] + ["  ```", ""]
    stale = sorted(set(accepted) - {entry.mutant for entry, _ in accepted_seen})
    if stale:
        out += ["## Entries of equivalent.toml that matched no survivor", ""]
        out += [f"- `{name}`" for name in stale] + [""]
    print("\n".join(out))


def _row(module: str, counts: Counter[str]) -> str:
    other = counts["all"] - counts["killed"] - counts["equivalent"] - counts["survived"]
    considered = counts["all"] - counts["equivalent"]
    score = 100 * counts["killed"] / considered if considered else 100.0
    return (
        f"| {module} | {counts['all']} | {counts['killed']} | {counts['equivalent']} | "
        f"{counts['survived']} | {other} | {score:.1f}% |"
    )


if __name__ == "__main__":
    main()
