"""Paired comparisons of two rows of Table 1 on the same questions: B's accuracy minus A's and its 95% interval.

Each run's questions are scored again from its `eval/<bench>/predictions.json` (the benchmark's own rule, as
`eval score` does). A question's score in a row is its mean over the row's seeds (1 correct, 0 wrong; rows the
benchmark leaves out of its accuracy, e.g. AIR's unparseable answers, are not scores); the two rows are
compared on the questions both have, with a paired bootstrap over questions (`core.stats.paired_bootstrap`,
10,000 resamples, seed 0). Pooling seeds this way is a cluster bootstrap with the question as the cluster:
the interval is what the sample of questions leaves open; the spread across training seeds is the per-row
interval of table1.md.

The paper's ablation chain, GRPO -> +ATAR -> +CR -> +TR, is compared link by link (consecutive rows of it
that were run, per model family); `--compare A,B` adds any pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

from audio_thinker.app.errors import EvalError
from audio_thinker.app.eval.predictions import read_predictions
from audio_thinker.app.eval.scoring import score_rows
from audio_thinker.core.stats import RESAMPLES, paired_bootstrap

CHAIN = ("GRPO", "GRPO+ATAR", "GRPO+ATAR+CR", "GRPO+ATAR+CR+TR")  # Table 1's method column
BOOTSTRAP_SEED = 0


def chain_pairs(entries: Sequence[dict]) -> list[tuple[str, str]]:
    """Consecutive links of the paper's ablation chain among the rows, per model family."""
    pairs = []
    for family in dict.fromkeys(e["family"] for e in entries):
        chain = sorted((CHAIN.index(e["method"]), e["row"]) for e in entries
                       if e["family"] == family and e["method"] in CHAIN)
        pairs += [(a, b) for (_, a), (_, b) in pairwise(chain)]
    return pairs


def _run_scores(run: Path, bench: str) -> dict[str, float] | None:
    """Question id -> 1.0 / 0.0 for the counted questions of one run's evaluation; None without predictions."""
    path = run / "eval" / bench / "predictions.json"
    if not path.is_file():
        return None
    return {s.id: float(s.status == "correct") for s in score_rows(read_predictions(path, bench), bench) if s.counted}


def row_scores(entry: dict, bench: str) -> dict[str, float] | None:
    """Question id -> the row's score averaged over its seeds (over the seeds that counted the question)."""
    runs = [_run_scores(Path(r["run"]), bench) for r in entry["runs"]]
    if any(r is None for r in runs):
        return None
    ids = dict.fromkeys(q for r in runs for q in r)
    return {q: sum(r[q] for r in runs if q in r) / sum(q in r for r in runs) for q in ids}


def compare(a: dict, b: dict) -> list[dict]:
    """The comparison of rows `a` and `b` on each benchmark both were evaluated on."""
    out = []
    for bench in [x for x in a["ours"] if x in b["ours"]]:
        item = {"bench": bench, "a": a["row"], "b": b["row"], "seeds_a": len(a["runs"]), "seeds_b": len(b["runs"])}
        sa, sb = row_scores(a, bench), row_scores(b, bench)
        common = [q for q in sa if q in sb] if sa is not None and sb is not None else []
        if not common:
            why = "no predictions.json to pair" if sa is None or sb is None else "no question in common"
            out.append({**item, "difference": None, "ci95": None, "questions": 0, "note": why})
            continue
        result = paired_bootstrap([sa[q] for q in common], [sb[q] for q in common], RESAMPLES, BOOTSTRAP_SEED)
        out.append({**item, "difference": result.difference, "ci95": result.ci95, "questions": result.questions,
                    "resamples": result.resamples, "seed": result.seed})
    return out


def comparisons(entries: Sequence[dict], extra: Sequence[tuple[str, str]] = ()) -> list[dict]:
    """The chain's links and the `extra` pairs (each once), compared on every common benchmark."""
    by_row = {e["row"]: e for e in entries}
    for a, b in extra:
        for name in (a, b):
            if name not in by_row:
                raise EvalError(f"--compare {a},{b}: no run of row {name} (rows: {', '.join(by_row)})")
    pairs = list(dict.fromkeys([*chain_pairs(entries), *extra]))
    return [item for a, b in pairs for item in compare(by_row[a], by_row[b])]


def comparison_lines(table: dict) -> list[str]:
    """One line per comparison, e.g. `grpo-a -> model-a on mmau: +3.10 points, 95% interval [0.85, 5.40] ...`."""
    lines = []
    for c in table["comparisons"]:
        head = f"{c['a']} -> {c['b']} on {c['bench']}"
        if c["difference"] is None:
            lines.append(f"{head}: not compared ({c['note']})")
            continue
        lo, hi = c["ci95"]
        lines.append(f"{head}: {c['difference']:+.2f} points, 95% interval [{lo:+.2f}, {hi:+.2f}] "
                     f"({c['questions']} questions, seeds {c['seeds_a']} / {c['seeds_b']}; paired bootstrap)")
    return lines
