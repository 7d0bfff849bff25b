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
    assert all(Path(p.config.run.output_dir) == out / p.row.name for p in plans)
    assert all(row_of_config(p.config, "grpo") == p.row and p.train_args[0] == "train" for p in plans)
    # No --bench: the config's held-out split, read as the synthetic layout.
    assert [(b.bench, b.data) for b in benches] == [("synthetic", load_config().data.eval_manifest)]
    base = plan_ablation(AblateOptions(rows=["qwen2-audio-base"], out="/tmp/x"), [])[2][0]
    assert base.train_args is None and base.policy == Path(load_config().model.policy_path).resolve()


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


def results(sound: float, music: float, speech: float, total: float, rates: dict[str, float | None]) -> dict:
    acc = {"sound": sound, "music": music, "speech": speech}
    return {
        "total": {"accuracy": total}, "by_task": {k: {"accuracy": v} for k, v in acc.items()},
        "no_think_rate": {"total": rates.pop("all"), "by_difficulty": rates},
    }


def make_run(path: Path, variant: str, mode: str, res: dict, bench: str = "mmau", family: str = "qwen2_audio") -> Path:
    path.mkdir(parents=True)
    config = load_config(None, [f"reward.variant={variant}", f"prompt.mode={mode}", f"model.family={family}"])
    dump_config(config, path / "config.yaml")
    (path / "eval" / bench).mkdir(parents=True)
    (path / "eval" / bench / "results.json").write_text(json.dumps(res))
    return path


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
    assert grpo_a["ours"] == {"mmau": {"sound": 50.0, "music": 40.0, "speech": 30.0, "average": 40.1}}
    assert grpo_a["paper"] == rows()["grpo-a"].paper and table["rows"][2]["paper"] == {}
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "| grpo-a | GRPO | ours | 50.00 | 40.00 | 30.00 | 40.10 | - | - | - | - | - | - | - | - | - |" in md
    paper = "| paper | 68.47 | 62.87 | 60.06 | 63.80 | 56.36 | 39.81 | 48.98 | 50.20 | 64.50 | - | - | - | - |"
    assert f"|  |  {paper}" in md
    assert "| mine | variant atar_cr_tr, prompt think | ours | - |" in md
    assert "| model-c | 70.00 | 40.00 | 10.00 | 40.00 |" in md  # Figure 2's numbers, easy..hard, all
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
    with pytest.raises(EvalError, match="are both row grpo-a"):
        build_table([b, d])


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
