"""Table 1: the paper's numbers as the data file holds them, the rows' configs, and the report from run dirs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from audio_thinker.app.errors import EvalError
from audio_thinker.app.table1.ablate import plan_ablation
from audio_thinker.app.table1.options import AblateOptions
from audio_thinker.app.table1.report import build_table, render_table1, write_report
from audio_thinker.app.table1.rows import paper_table, row_of_config, rows
from audio_thinker.core.options import OptionError
from audio_thinker.core.presets import dump_config, load_config

PAPER = Path(__file__).resolve().parents[3] / "shared" / "paper"
COLUMN_ORDER = [("mmau", c) for c in ("sound", "music", "speech", "average")] + [
    ("mmar", c) for c in ("sound", "music", "speech", "average")
] + [("air", "average")]


def avg(row: str, bench: str) -> float:
    return rows()[row].paper[bench]["average"]


def test_mmau_average_is_the_count_weighted_mean_except_where_the_paper_prints_otherwise():
    # MMAU test-mini: 333 sound, 334 music, 333 speech questions.
    notes = " ".join(paper_table()["notes"])
    off = dict(re.findall(r"([\w.-]+) \((?:the mean is )?(\d+\.\d+)\)", notes))  # the rows the notes name
    assert set(off) == {"grpo-c", "grpo-d", "sft-b", "qwen2-audio-base"}
    for name, row in rows().items():
        m = row.paper["mmau"]
        mean = (333 * m["sound"] + 334 * m["music"] + 333 * m["speech"]) / 1000
        if name in off:
            assert mean == pytest.approx(float(off[name]), abs=0.006) and abs(mean - m["average"]) > 0.1
        else:
            assert mean == pytest.approx(m["average"], abs=0.05), name


def test_the_differences_the_papers_prose_quotes_hold_in_the_data_file():
    # "Effectiveness of ATAR", "Necessity of Consistency Reward", "Impact of Think Reward" (MMAU, MMAR, AIR avg).
    quoted = [
        ("model-a", "grpo-a", (3.10, 0.50, 1.9)), ("model-a", "grpo-b", (1.90, 0.70, 2.3)),
        ("model-d", "grpo-c", (1.80, 1.70, 0.6)), ("model-d", "grpo-d", (1.70, 2.40, 0.9)),
        ("model-b", "model-a", (0.80, 0.20, 0.10)), ("model-e", "model-d", (1.00, 0.20, 0.20)),
        ("model-c", "model-b", (0.30, 1.10, 0.3)), ("model-f", "model-e", (1.20, 0.90, 0.1)),
    ]
    for better, worse, deltas in quoted:
        got = tuple(round(avg(better, b) - avg(worse, b), 2) for b in ("mmau", "mmar", "air"))
        assert got == pytest.approx(deltas, abs=1e-9), (better, worse)
    # "Comparison with SOTA": test-mini from 66.30 to 73.70 (Omni) and from 54.90 to 68.00 (Qwen2-Audio); AIR 67.1.
    assert (avg("qwen2.5-omni-base", "mmau"), avg("model-f", "mmau")) == (66.30, 73.70)
    assert (avg("qwen2-audio-base", "mmau"), avg("model-c", "mmau")) == (54.90, 68.00)
    assert avg("model-f", "air") == 67.1


PAPER_ABSENT = (
    "the paper's text is not in the repository (only in ../shared/paper beside the development checkout); "
    "the two checks above test paper.json everywhere"
)


@pytest.mark.skipif(not PAPER.is_dir(), reason=PAPER_ABSENT)
def test_every_number_equals_the_papers_table_text():
    text = next(PAPER.glob("*.txt")).read_text()
    names = {"Qwen2-Audio-7B-Instruct (reproduce)": "qwen2-audio-base", "Qwen2.5-Omni (reproduce)": "qwen2.5-omni-base"}
    checked = 0
    for line in text.splitlines():
        cells = [re.sub(r"</?[bu]>", "", c).strip() for c in line.split("\t")]
        name = names.get(cells[0], cells[0])
        if name in rows() and len(cells) == 11:
            assert [rows()[name].paper[b][c] for b, c in COLUMN_ORDER] == [float(v) for v in cells[2:]], name
            checked += 1
    assert checked == len(rows()) == 16


def test_rows_set_the_variant_and_prompt_of_their_method():
    options = AblateOptions(rows="grpo-a,grpo-b,model-a,model-b,model-c", out="/tmp/ablate-plan")
    out, benches, plans = plan_ablation(options, ["run.total_steps=7"])
    got = {p.row.name: (p.config.reward.variant, p.config.prompt.mode, p.config.run.total_steps) for p in plans}
    assert got == {"grpo-a": ("grpo", "no_think", 7), "grpo-b": ("grpo_cot", "think", 7),
                   "model-a": ("atar", "adaptive", 7), "model-b": ("atar_cr", "adaptive", 7),
                   "model-c": ("atar_cr_tr", "adaptive", 7)}
    assert all(Path(p.config.run.output_dir) == out / p.row.name / "seed-0" for p in plans)
    assert all(p.seed == p.config.run.seed == 0 for p in plans)
    assert all(row_of_config(p.config, "grpo") == p.row and p.train_args[0] == "train" for p in plans)
    # No --bench: the config's held-out split, read as the synthetic layout.
    assert [(b.bench, b.data) for b in benches] == [("synthetic", load_config().data.eval_manifest)]
    base = plan_ablation(AblateOptions(rows=["qwen2-audio-base"], out="/tmp/x"), [])[2][0]
    assert base.train_args is None and base.policy == Path(load_config().model.policy_path).resolve()


def test_seeds_train_each_row_once_per_seed_from_the_configs_seed_on():
    options = AblateOptions(rows="qwen2-audio-base,grpo-a,model-a", out="/tmp/ablate-seeds", seeds=3)
    out, _, plans = plan_ablation(options, ["run.seed=5", "run.total_steps=2"])
    got = [(p.row.name, p.seed, p.dir.relative_to(out).as_posix()) for p in plans]
    assert got == [("qwen2-audio-base", None, "qwen2-audio-base"),
                   ("grpo-a", 5, "grpo-a/seed-5"), ("grpo-a", 6, "grpo-a/seed-6"), ("grpo-a", 7, "grpo-a/seed-7"),
                   ("model-a", 5, "model-a/seed-5"), ("model-a", 6, "model-a/seed-6"), ("model-a", 7, "model-a/seed-7")]
    for p in plans[1:]:
        assert (p.config.run.seed, p.config.run.total_steps, Path(p.config.run.output_dir)) == (p.seed, 2, p.dir)
        assert [a for a in p.train_args if a.startswith("run.seed=")] == [f"run.seed={p.seed}"]  # only its own
    # Everything but the seed is the same across a row's seeds.
    a, b = (plans[1].config.model_dump(), plans[2].config.model_dump())
    assert {k: v for k, v in a["run"].items() if k not in ("seed", "output_dir", "name")} == {
        k: v for k, v in b["run"].items() if k not in ("seed", "output_dir", "name")}
    assert {k: v for k, v in a.items() if k != "run"} == {k: v for k, v in b.items() if k != "run"}
    with pytest.raises(OptionError, match=r"--compare 'grpo-a': expected two different rows as A,B"):
        plan_ablation(AblateOptions(rows="grpo-a", compare=["grpo-a"]), [])
    with pytest.raises(OptionError, match=r"--compare grpo-a,model-c: compares rows of --rows \(grpo-a, model-a\)"):
        plan_ablation(AblateOptions(rows="grpo-a,model-a", compare=["grpo-a,model-c"]), [])


@pytest.mark.parametrize(
    ("row_list", "overrides", "message"),
    [
        ("grpoa", [], r"unknown row 'grpoa'; did you mean grpo-a\?"),
        ("grpo-c", [], r"grpo-c is a qwen2_5_omni row but the config trains model.family=qwen2_audio"),
        ("model-a", ["reward.variant=grpo"], r"override reward.variant: set by each row"),
        ("model-a", ["run.output_dir=/x"], r"ablate sets them \(use --out\)"),
        ("sft-b", [], r"an SFT\+CoT row trains on rationales: give --cot-data FILE"),
    ],
)
def test_bad_rows_and_overrides_are_named_before_anything_runs(row_list, overrides, message):
    with pytest.raises(OptionError, match=message):
        plan_ablation(AblateOptions(rows=row_list), overrides)


def test_sft_rows_are_sft_runs_of_their_target_and_the_cot_rows_train_on_the_rationales(tmp_path):
    cot = tmp_path / "train_cot.jsonl"
    cot.write_text("")
    options = AblateOptions(rows="sft-a,sft-b", out=str(tmp_path / "out"), cot_data=str(cot))
    plans = plan_ablation(options, ["run.total_steps=2"])[2]
    got = {p.row.name: (p.train_args[0], p.config.sft.target, p.config.prompt.mode, p.row.prompt_mode)
           for p in plans}
    assert got == {"sft-a": ("sft", "answer", "no_think", "no_think"), "sft-b": ("sft", "cot", "think", "think")}
    assert plans[1].config.data.train_manifest == str(cot) != plans[0].config.data.train_manifest
    assert all(row_of_config(p.config, "sft") == p.row for p in plans)
    with pytest.raises(FileNotFoundError, match="--cot-data /nope: not a file"):
        plan_ablation(AblateOptions(rows="sft-b", cot_data="/nope"), [])
    with pytest.raises(OptionError, match="override sft.target: set by each row"):
        plan_ablation(AblateOptions(rows="sft-a"), ["sft.target=cot"])


def test_omni_rows_run_on_the_omni_family():
    plans = plan_ablation(AblateOptions(rows="grpo-c,model-f", out="/tmp/x"), ["model.family=qwen2_5_omni"])[2]
    assert [(p.row.name, p.config.model.family) for p in plans] == [
        ("grpo-c", "qwen2_5_omni"), ("model-f", "qwen2_5_omni"),
    ]


def test_qwen3_omni_rows_are_ours_with_the_papers_methods_and_no_paper_numbers():
    overrides = ["model.family=qwen3_omni", "model.policy_path=artifacts/tiny/qwen3_omni"]
    names = ["base", "grpo", "grpo-cot", "atar", "atar-cr", "atar-cr-tr"]
    plans = plan_ablation(AblateOptions(rows=[f"qwen3-omni-{n}" for n in names], out="/tmp/x"), overrides)[2]
    got = [(p.row.name, p.row.paper, p.config.reward.variant, p.config.prompt.mode) for p in plans[1:]]
    assert got == [
        ("qwen3-omni-grpo", {}, "grpo", "no_think"), ("qwen3-omni-grpo-cot", {}, "grpo_cot", "think"),
        ("qwen3-omni-atar", {}, "atar", "adaptive"), ("qwen3-omni-atar-cr", {}, "atar_cr", "adaptive"),
        ("qwen3-omni-atar-cr-tr", {}, "atar_cr_tr", "adaptive"),
    ]  # fmt: skip
    assert plans[0].train_args is None and all(row_of_config(p.config, "grpo") == p.row for p in plans[1:])
    with pytest.raises(OptionError, match=r"qwen3-omni-atar is a qwen3_omni row .* model.family=qwen2_audio"):
        plan_ablation(AblateOptions(rows="qwen3-omni-atar"), [])


def results(sound: float, music: float, speech: float, total: float, rates: dict[str, float | None]) -> dict:
    """A results.json as older runs wrote it: accuracies without counts or intervals."""
    acc = {"sound": sound, "music": music, "speech": speech}
    return {
        "total": {"accuracy": total}, "by_task": {k: {"accuracy": v} for k, v in acc.items()},
        "no_think_rate": {"total": rates.pop("all"), "by_difficulty": rates},
    }


def make_run(path: Path, variant: str, mode: str, res: dict, bench: str = "mmau", family: str = "qwen2_audio",
             seed: int = 0) -> Path:
    path.mkdir(parents=True)
    config = load_config(None, [f"reward.variant={variant}", f"prompt.mode={mode}", f"model.family={family}",
                                f"run.seed={seed}"])
    dump_config(config, path / "config.yaml")
    (path / "eval" / bench).mkdir(parents=True)
    (path / "eval" / bench / "results.json").write_text(json.dumps(res))
    return path


def one(value: float | None, ci: list[float] | None = None) -> dict:
    """The cell of a row with one run: its value is the mean, no interval across seeds."""
    return {"mean": value, "ci95": None, "per_seed": [value], "per_seed_ci95": [ci]}


def test_report_puts_our_numbers_beside_the_papers(tmp_path):
    a = make_run(tmp_path / "r1", "grpo", "no_think",
                 results(50.0, 40.0, 30.0, 40.1, {"easy": 100.0, "medium": 100.0, "hard": 90.0, "all": 97.0}))
    c = make_run(tmp_path / "r2", "atar_cr_tr", "adaptive",
                 results(60.0, 55.5, 45.0, 53.5, {"easy": 70.0, "medium": 40.0, "hard": 10.0, "all": 40.0}))
    custom = make_run(tmp_path / "mine", "atar_cr_tr", "think", results(1.0, 2.0, 3.0, 2.0, {"all": None}),
                      bench="synthetic")
    written = write_report([a, c, custom], tmp_path / "out")
    table = json.loads((tmp_path / "out" / "table1.json").read_text())
    assert [e["row"] for e in table["rows"]] == ["grpo-a", "model-c", "mine"]
    assert table["benchmarks"] == ["mmau", "mmar", "air", "synthetic"]
    grpo_a = table["rows"][0]
    assert grpo_a["ours"] == {"mmau": {"sound": one(50.0), "music": one(40.0), "speech": one(30.0),
                                       "average": one(40.1)}}
    assert grpo_a["runs"] == [{"seed": 0, "run": str(a)}]
    assert grpo_a["paper"] == rows()["grpo-a"].paper and table["rows"][2]["paper"] == {}
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "| grpo-a | GRPO | ours | 50.00 | 40.00 | 30.00 | 40.10 | - | - | - | - | - | - | - | - | - |" in md
    paper = "| paper | 68.47 | 62.87 | 60.06 | 63.80 | 56.36 | 39.81 | 48.98 | 50.20 | 64.50 | - | - | - | - |"
    assert f"|  |  {paper}" in md
    assert "| mine | variant atar_cr_tr, prompt think | ours | - |" in md
    assert "| model-c | GRPO+ATAR+CR+TR | ours | 70.00 | 40.00 | 10.00 | 40.00 |" in md  # Figure 2: easy..hard, all
    # grpo-a and model-c are links of the paper's chain, but these runs kept no predictions to pair.
    assert table["comparisons"] == [{"bench": "mmau", "a": "grpo-a", "b": "model-c", "seeds_a": 1, "seeds_b": 1,
                                     "difference": None, "ci95": None, "questions": 0,
                                     "note": "no predictions.json to pair"}]
    figure = tmp_path / "out" / "figure2_mmau.png"
    assert figure in written and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "out" / "figure2_synthetic.png").exists()  # no difficulty levels there
    assert render_table1(build_table([a, c, custom])) == md


def test_an_sft_run_is_its_sft_row(tmp_path):
    run = make_run(tmp_path / "s", "grpo", "no_think", results(1, 2, 3, 2, {"all": 100.0}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "sft/loss": 1.5}) + "\n")
    assert build_table([run])["rows"][0]["row"] == "sft-a"  # target answer, no_think prompt
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/total_mean": 0.5}) + "\n")
    assert build_table([run])["rows"][0]["row"] == "grpo-a"


def test_report_names_a_run_without_evaluations_and_duplicate_rows(tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(EvalError, match="neither row.json nor config.yaml"):
        build_table([bare])
    a = make_run(tmp_path / "a", "grpo", "no_think", results(1, 2, 3, 2, {"all": 1.0}))
    (a / "eval" / "mmau" / "results.json").unlink()
    with pytest.raises(EvalError, match=r"no evaluation .*audio-thinker eval --model .*/a/final"):
        build_table([a])
    b = make_run(tmp_path / "b", "grpo", "no_think", results(1, 2, 3, 2, {"all": 1.0}))
    d = make_run(tmp_path / "d", "grpo", "no_think", results(1, 2, 3, 2, {"all": 1.0}))
    with pytest.raises(EvalError, match="are both row grpo-a with seed 0"):
        build_table([b, d])
    e = make_run(tmp_path / "e", "grpo", "no_think", results(1, 2, 3, 2, {"all": 1.0}), bench="mmar", seed=1)
    with pytest.raises(EvalError, match="are seeds of row grpo-a but were evaluated on mmau and mmar"):
        build_table([b, e])


def mmau_rows(correct: list[bool]) -> list[dict]:
    """MMAU rows (two choices each) with a prediction that is right where `correct` says."""
    return [{"id": f"q{i}", "audio_id": f"./a/q{i}.wav", "question": "Which?", "choices": ["yes", "no"],
             "answer": "yes", "task": "sound", "difficulty": "easy", "model_prediction": "yes" if ok else "no"}
            for i, ok in enumerate(correct, start=1)]


def evaluated_run(path: Path, name: str, seed: int | None, correct: list[bool]) -> Path:
    """A run directory as `ablate` leaves it: row.json and eval/mmau/ with results.json and predictions.json."""
    from audio_thinker.app.eval.scoring import score_file

    (path / "eval" / "mmau").mkdir(parents=True)
    row = rows()[name]
    (path / "row.json").write_text(json.dumps({"row": name, "family": row.family, "method": row.method,
                                               "seed": seed}))
    predictions = path / "eval" / "mmau" / "predictions.json"
    predictions.write_text(json.dumps(mmau_rows(correct)))
    (path / "eval" / "mmau" / "results.json").write_text(json.dumps(score_file(predictions, "mmau")))
    return path


def test_a_rows_seeds_give_each_seeds_value_their_mean_and_its_interval(tmp_path):
    runs = [evaluated_run(tmp_path / "a0", "grpo-a", 0, [True, True, False, False]),
            evaluated_run(tmp_path / "m0", "model-a", 0, [True, True, True, False]),
            evaluated_run(tmp_path / "m1", "model-a", 1, [True, False, True, True])]
    table = build_table(runs)
    model_a = table["rows"][1]
    assert (model_a["row"], [r["seed"] for r in model_a["runs"]]) == ("model-a", [0, 1])
    average = model_a["ours"]["mmau"]["average"]
    # Seeds 75 and 75 (3 of 4 each): mean 75, no spread; each seed's Wilson interval of 3/4.
    assert average == {"mean": 75.0, "ci95": [75.0, 75.0], "per_seed": [75.0, 75.0],
                       "per_seed_ci95": [[30.06, 95.44], [30.06, 95.44]]}
    md = render_table1(table)
    assert "| model-a | GRPO+ATAR | mean of 2 seeds | 75.00 [75.00, 75.00] | - | - | 75.00 [75.00, 75.00] |" in md
    assert "|  |  | seed 1 | 75.00 [30.06, 95.44] | - | - | 75.00 [30.06, 95.44] |" in md
    assert "| grpo-a | GRPO | ours | 50.00 [15.00, 85.00] |" in md


def test_the_mean_interval_across_seeds_is_students_t(tmp_path):
    runs = [evaluated_run(tmp_path / "m0", "model-a", 0, [True] * 3 + [False] * 7),
            evaluated_run(tmp_path / "m1", "model-a", 1, [True] * 5 + [False] * 5)]
    cell = build_table(runs)["rows"][0]["ours"]["mmau"]["average"]
    # 30 and 50: mean 40, sd 14.142, half = 12.7062 * 14.142 / sqrt(2) = 127.06: clipped to [0, 100].
    assert (cell["mean"], cell["ci95"], cell["per_seed"]) == (40.0, [0.0, 100.0], [30.0, 50.0])


def test_the_chain_and_any_pair_are_compared_on_the_same_questions_pooled_over_seeds(tmp_path):
    from audio_thinker.core.stats import paired_bootstrap

    runs = [evaluated_run(tmp_path / "base", "qwen2-audio-base", None, [True, False, False, False]),
            evaluated_run(tmp_path / "a0", "grpo-a", 0, [True, True, False, False]),
            evaluated_run(tmp_path / "m0", "model-a", 0, [True, True, True, False]),
            evaluated_run(tmp_path / "m1", "model-a", 1, [True, False, True, True])]
    table = build_table(runs, [("qwen2-audio-base", "model-a")])
    # grpo-a -> model-a is the chain's first link. Per question: grpo-a 1, 1, 0, 0; model-a (mean of its two
    # seeds) 1, 0.5, 1, 0.5; difference 0, -0.5, 1, 0.5: +25 points.
    link, extra = table["comparisons"]
    expected = paired_bootstrap([1, 1, 0, 0], [1, 0.5, 1, 0.5], 10_000, 0)
    assert link == {"bench": "mmau", "a": "grpo-a", "b": "model-a", "seeds_a": 1, "seeds_b": 2, "difference": 25.0,
                    "ci95": expected.ci95, "questions": 4, "resamples": 10_000, "seed": 0}
    assert (extra["a"], extra["b"], extra["difference"], extra["seeds_a"]) == ("qwen2-audio-base", "model-a", 50.0, 1)
    md = render_table1(table)
    lo, hi = expected.ci95
    assert f"| MMAU | grpo-a | model-a | +25.00 | [{lo:+.2f}, {hi:+.2f}] | 4 | 1 / 2 |" in md
    assert build_table(runs, [("qwen2-audio-base", "model-a")]) == table  # seeded: the same every time
    with pytest.raises(EvalError, match=r"--compare grpo-a,model-f: no run of row model-f"):
        build_table(runs, [("grpo-a", "model-f")])


def test_report_command_takes_pairs_and_names_a_bad_one(tmp_path, capsys):
    from audio_thinker.app.cli.main import main

    runs = [str(evaluated_run(tmp_path / "a0", "grpo-a", 0, [True, False])),
            str(evaluated_run(tmp_path / "m0", "model-a", 0, [True, True]))]
    assert main(["report", "--runs", *runs, "--out", str(tmp_path / "rep"), "--compare", "model-a,grpo-a"]) == 0
    table = json.loads((tmp_path / "rep" / "table1.json").read_text())
    assert [(c["a"], c["b"], c["difference"]) for c in table["comparisons"]] == [
        ("grpo-a", "model-a", 50.0), ("model-a", "grpo-a", -50.0)]
    capsys.readouterr()
    assert main(["report", "--runs", *runs, "--out", str(tmp_path / "rep"), "--compare", "model-a"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--compare 'model-a': expected two different rows as A,B" in err


MMAR_COUNTS = {"sound": 165, "music": 206, "speech": 294}


def test_mmar_columns_are_whole_questions_except_the_cells_the_notes_name():
    # k / n to 2 decimals for MMAR's 165 sound, 206 music, 294 speech questions; the notes name each exception
    # with the two fractions around it.
    off = {(name, col) for name, row in rows().items() for col, n in MMAR_COUNTS.items()
           if all(round(100 * k / n, 2) != row.paper["mmar"][col] for k in range(n + 1))}
    assert off == {("model-a", "music"), ("model-b", "music"), ("model-c", "music"),
                   ("model-a", "speech"), ("model-b", "speech"), ("model-c", "speech")}
    note = next(n for n in paper_table()["notes"] if n.startswith("MMAR has 165 sound"))
    for fraction in ("112/206 = 54.37", "113/206 = 54.85", "93/206 = 45.15", "94/206 = 45.63", "159/294 = 54.08",
                     "160/294 = 54.42", "183/294 = 62.24", "184/294 = 62.59", "169/294 = 57.48", "170/294 = 57.82"):
        k, rest = fraction.split("/")
        n, value = rest.split(" = ")
        assert f"{100 * int(k) / int(n):.2f}" == value and fraction in note


@pytest.mark.skipif(not PAPER.is_dir(), reason=PAPER_ABSENT)
def test_the_notes_disagreements_are_in_the_papers_tables_2_and_3():
    text = next(PAPER.glob("*.txt")).read_text()

    def cells(prefix: str) -> list[str]:
        """The cells after the name of the last line (Table 3 comes after Table 2) that starts with `prefix`."""
        line = [line for line in text.splitlines() if line.startswith(prefix)][-1]
        return [re.sub(r"</?[bu]>", "", c).strip() for c in line.split("\t")[1:]]

    # Table 3 (AIR columns, then MMAR sound, music, speech, avg): model-c music 45.63, model-f sound 68.48.
    assert cells("AUDIO-THINKER QWEN2-AUDIO")[6:10] == ["56.97", "45.63", "57.50", "52.00"]
    assert cells("AUDIO-THINKER QWEN2.5-OMNI")[6:10] == ["68.48", "53.88", "64.29", "65.30"]
    assert cells("Qwen2.5-Omni-7B (Xu et al. 2025)")[6:10] == ["58.79", "40.78", "59.86", "56.70"]
    assert cells("Qwen2-Audio-Instruct (Yang et al. 2024a)")[6:10] == ["33.33", "24.27", "32.31", "30.00"]
    # Table 2 (test-mini, test per column pair): the reproduce row is the leaderboard's "Qwen2 Audio" row.
    assert cells("Qwen2 Audio (Yang et al. 2024a)")[::2] == ["62.16", "53.59", "48.59", "54.90"]
    assert cells("Qwen2-Audio-Instruct (Chu et al. 2023)")[::2] == ["55.25", "44.00", "30.03", "43.10"]
    assert cells("Qwen2.5-Omni-7B (Xu et al. 2025)\t69.67")[::2] == ["69.67", "67.37", "61.86", "66.30"]
    base = rows()["qwen2-audio-base"].paper["mmau"]
    assert [f"{base[c]:.2f}" for c in ("sound", "music", "speech", "average")] == ["62.16", "53.59", "48.59", "54.90"]


def test_a_rehearsed_ablation_rehearses_every_row_and_evaluates_on_the_swapped_data(tmp_path):
    options = AblateOptions(rows="grpo-a,sft-a", preset="qwen2-audio-7b", sft_preset="sft-a", rehearse=True,
                            out=str(tmp_path))  # fmt: skip
    _, benches, plans = plan_ablation(options, ["run.total_steps=2"])
    assert [p.train_args[:2] for p in plans] == [["train", "--rehearse"], ["sft", "--rehearse"]]
    assert all(p.config.run.rehearse and p.config.model.dtype == "float32" for p in plans)
    assert plans[0].config.trainer.num_ranks == 5 and plans[1].config.trainer.num_ranks == 8
    assert [(b.bench, b.data) for b in benches] == [("synthetic", "artifacts/synthetic/eval.jsonl")]


def test_a_rehearsed_run_is_marked_in_the_table(tmp_path):
    run = make_run(tmp_path / "r", "atar_cr_tr", "adaptive", results(1.0, 2.0, 3.0, 2.0, {"all": None}))
    (run / "rehearsal.json").write_text("{}")
    assert build_table([run])["rows"][0]["method"].endswith(" (rehearsal)")
