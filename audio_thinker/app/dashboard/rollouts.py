"""The rollout browser's view of one step: samples grouped by question, filtered, searched and sorted.

Filters come from the page's query string (plain GET form), so a filtered view is a link that can be
shared; a filter that matches no sample of a question hides the question.
"""

from __future__ import annotations

from dataclasses import dataclass

from audio_thinker.app.dashboard.jsonl import finite

MODES = ("think", "no_think", "invalid")
SCORES = {"consistency_prob": "judge consistency probability", "think_quality": "judge think-quality score"}
SORTS = {"sample": "sample order", "adv_desc": "advantage, highest first", "adv_asc": "advantage, lowest first"}
TERMS = (  # (dump key, column label): every reward term of a sample
    ("format", "format"),
    ("accuracy", "accuracy"),
    ("consistency_reward", "consistency"),
    ("think_reward", "think"),
    ("total", "total"),
    ("advantage", "advantage"),
)


_TEXT, _NUMBER, _FLAG = (str,), (int, float), (bool,)
ROW_TYPES = {  # the dump fields the pages read, and the JSON types they may have (null: always allowed)
    **dict.fromkeys(("question_id", "group", "question", "answer", "response", "audio_path", "mode", "difficulty",
                     "category", "think", "answer_text", "finish_reason"), _TEXT),
    **dict.fromkeys(("step", "sample", "num_tokens"), (int,)),
    **dict.fromkeys(("advantage", "total", "format", "accuracy", "consistency_reward", "think_reward",
                     "consistency_prob", "think_quality", "consistency"), _NUMBER),
    **dict.fromkeys(("correct", "letters"), _FLAG),
}  # fmt: skip


def _typed(row: object) -> bool:
    if not isinstance(row, dict):
        return False
    for key, kinds in ROW_TYPES.items():
        value = row.get(key)
        if value is not None and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            return False
    choices = row.get("choices")
    return choices is None or (isinstance(choices, list) and all(isinstance(c, str) for c in choices))


def typed_rows(rows: list) -> tuple[list[dict], int]:
    """The rows whose fields have the types the pages expect, and how many were not (a hand-edited or foreign
    dump): a wrong type is skipped with a warning, never a 500."""
    kept = [row for row in rows if _typed(row)]
    return kept, len(rows) - len(kept)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


@dataclass
class Filters:
    mode: str = ""
    correct: str = ""  # "yes" | "no" | ""
    difficulty: str = ""
    category: str = ""
    score: str = "consistency_prob"
    score_min: float | None = None
    score_max: float | None = None
    q: str = ""
    sort: str = "sample"

    @classmethod
    def from_query(cls, query) -> Filters:
        """From the query parameters; unknown values are ignored rather than refused."""
        get = lambda key: (query.get(key) or "").strip()
        return cls(
            mode=get("mode") if get("mode") in MODES else "",
            correct=get("correct") if get("correct") in ("yes", "no") else "",
            difficulty=get("difficulty"),
            category=get("category"),
            score=get("score") if get("score") in SCORES else "consistency_prob",
            score_min=_number(get("score_min")),
            score_max=_number(get("score_max")),
            q=get("q"),
            sort=get("sort") if get("sort") in SORTS else "sample",
        )

    @property
    def active(self) -> bool:
        chosen = (self.mode, self.correct, self.difficulty, self.category, self.q)
        return any(chosen) or self.score_min is not None or self.score_max is not None

    def keep(self, row: dict) -> bool:
        if self.mode and row.get("mode") != self.mode:
            return False
        if self.correct and (row.get("correct") is True) != (self.correct == "yes"):
            return False
        if self.difficulty and str(row.get("difficulty") or "") != self.difficulty:
            return False
        if self.category and str(row.get("category") or "") != self.category:
            return False
        if self.score_min is not None or self.score_max is not None:
            score = row.get(self.score)
            if not isinstance(score, (int, float)):
                return False
            if (self.score_min is not None and score < self.score_min) or (
                self.score_max is not None and score > self.score_max
            ):
                return False
        if self.q:
            needle = self.q.lower()
            fields = [row.get("question"), row.get("response"), row.get("answer"), row.get("question_id")]
            fields += list(row.get("choices") or [])
            if not any(needle in str(f).lower() for f in fields if f is not None):
                return False
        return True


def _advantage(row: dict) -> float:
    value = finite(row.get("advantage"))
    return float(value) if isinstance(value, (int, float)) else 0.0


def group_samples(rows: list[dict], filters: Filters) -> list[dict]:
    """[{question fields..., samples: [row, ...]}] in the dump's order (or by advantage), filtered."""
    groups: dict[str, dict] = {}
    for row in rows:
        qid = str(row.get("question_id", row.get("group", "")))
        group = groups.get(qid)
        if group is None:
            group = groups[qid] = {
                "question_id": qid,
                "question": row.get("question", ""),
                "choices": row.get("choices") or [],
                "answer": row.get("answer", ""),
                "audio_path": row.get("audio_path"),
                "difficulty": row.get("difficulty") or "",
                "category": row.get("category") or "",
                "total": 0,
                "samples": [],
            }
        group["total"] += 1
        if filters.keep(row):
            group["samples"].append(row)
    out = [g for g in groups.values() if g["samples"]]
    if filters.sort != "sample":
        sign = -1 if filters.sort == "adv_desc" else 1
        for g in out:
            g["samples"].sort(key=lambda r: sign * _advantage(r))
        out.sort(key=lambda g: sign * _advantage(g["samples"][0]))
    return out


def facets(rows: list[dict]) -> dict[str, list[str]]:
    """The difficulty and category values of a step (the options of their filters)."""
    present = lambda key: sorted({str(r.get(key)) for r in rows if r.get(key) not in (None, "")})
    return {key: present(key) for key in ("difficulty", "category")}


def histogram_data(rows: list[dict]) -> dict[str, list[float]]:
    """Reward total and advantage of every sample of the step (drawn as histograms)."""
    return {
        key: [float(v) for v in (finite(r.get(key)) for r in rows) if isinstance(v, (int, float))]
        for key in ("total", "advantage")
    }
