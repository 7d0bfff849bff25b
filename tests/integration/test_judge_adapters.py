"""The paper's reward for other trainers, against a live judge (uvicorn on 127.0.0.1, the tiny Qwen3 judge, a key).

On one fixed batch (two questions, think / no_think / invalid, right and wrong), /v1/rewards, the TRL reward
function and verl's batch function give every term that `audio-thinker rewards --step S --total-steps T` computes
from the same responses and the judge's verdicts, to 1e-6. A real TRL `GRPOTrainer` runs 2 steps of a tiny text
policy with `AudioThinkerReward` in its reward_funcs; verl's and TRL's calls use their frameworks' keyword names.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import httpx
import pytest

from audio_thinker.app.cli.main import main as cli_main
from audio_thinker.core.net import free_port
from audio_thinker.core.rewards import penalty_factors
from reward_server.adapters import trl as trl_adapter
from reward_server.adapters import verl as verl_adapter
from reward_server.app import ServerSettings
from reward_server.backends import TransformersBackend
from reward_server.cli import ServerThread, build_server
from reward_server.client import JudgeClient, JudgeUnavailableError

KEY = "adapter-key"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEP, TOTAL = 3, 10
CHOICES = ["first", "second"]
QUESTIONS = {"q0": "Which of the two beeps is louder?", "q1": "Which beep comes first, the high or the low one?"}
GOLD = {"q0": "second", "q1": "first"}
BATCH = [  # (group, response)
    ("q0", "<think>The second beep has the larger amplitude.</think><answer>second</answer>"),  # think, right
    ("q0", "<think>The first one fades.</think><answer>first</answer>"),  # think, wrong
    ("q0", "<answer>second</answer>"),  # no_think, right
    ("q0", "the second one"),  # invalid
    ("q1", "<think>The high one starts before the low one.</think><answer>first</answer>"),  # think, right
    ("q1", "<answer>second</answer>"),  # no_think, wrong
    ("q1", "<answer>first</answer>"),  # no_think, right
    ("q1", "<think>Both at once.</think><answer>second</answer>"),  # think, wrong
]
TERMS = ("format", "accuracy", "consistency", "think", "total", "advantage")


@pytest.fixture(scope="module")
def judge_url(judge_path):
    settings = ServerSettings(api_keys=frozenset({KEY}), max_items=8)
    thread = ServerThread(build_server(lambda: TransformersBackend(judge_path, device="cpu"), settings, port=0))
    url = thread.start()
    JudgeClient(url).wait_ready(120)
    yield url
    thread.stop(60)


def rollouts() -> list[dict]:
    return [
        {"group": g, "question": QUESTIONS[g], "response": r, "answer": GOLD[g], "choices": CHOICES}
        for g, r in BATCH
    ]


def cli_rewards(tmp_path, verdicts: list[tuple[int | None, float | None]], capsys) -> dict:
    """`audio-thinker rewards --step STEP --total-steps TOTAL` on the batch with these judge verdicts."""
    path = tmp_path / "batch.jsonl"
    with path.open("w") as f:
        for r, (consistency, quality) in zip(rollouts(), verdicts):
            row = {k: r[k] for k in ("group", "response", "answer", "choices")}
            f.write(json.dumps({**row, "consistency": consistency, "think_quality": quality}) + "\n")
    capsys.readouterr()
    assert cli_main(["rewards", "--input", str(path), "--step", str(STEP), "--total-steps", str(TOTAL)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def route(judge_url) -> dict:
    body = {"items": rollouts(), "step": STEP, "total_steps": TOTAL, "advantages": True}
    r = httpx.post(f"{judge_url}/v1/rewards", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_batch_route_equals_audio_thinker_rewards(route, tmp_path, capsys):
    samples = route["samples"]
    assert [s["mode"] for s in samples] == ["think", "think", "no_think", "invalid", "think", "no_think", "no_think",
                                            "think"]  # fmt: skip
    # The judge was asked what eq. 7 needs: think quality of every think sample, consistency of the right ones.
    assert [s["judge_consistency"] is not None for s in samples] == [1, 0, 0, 0, 1, 0, 0, 0]
    assert [s["judge_think_quality"] is not None for s in samples] == [1, 1, 0, 0, 1, 0, 0, 1]
    want = cli_rewards(tmp_path, [(s["judge_consistency"], s["judge_think_quality"]) for s in samples], capsys)
    for key in ("think_rate", "gamma_think", "gamma_no_think"):
        assert route[key] == pytest.approx(want["batch"][key], abs=1e-6)
    assert route["think_rate"] == pytest.approx(4 / 7)  # 4 think of 7 valid samples
    assert (route["gamma_think"], route["gamma_no_think"]) == pytest.approx(penalty_factors(4 / 7, STEP, TOTAL))
    for got, expected in zip(samples, want["samples"]):
        assert (got["mode"], got["correct"]) == (expected["mode"], expected["correct"])
        for term in TERMS:
            assert got[term] == pytest.approx(expected[term], abs=1e-6), term


def test_the_batch_route_refuses_what_it_cannot_score(judge_url):
    def post(**body):
        body = {"items": rollouts()[:1], "step": 1, "total_steps": 2, **body}
        return httpx.post(f"{judge_url}/v1/rewards", json=body, headers={"Authorization": f"Bearer {KEY}"})

    r = post(step=3)
    assert r.status_code == 422 and "step 3 is past total_steps 2" in r.json()["message"]
    r = post(items=[{**rollouts()[0], "answer": "third"}])
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "items", 0, "answer"]
    r = post(items=rollouts() * 2)
    assert r.status_code == 413 and r.json()["detail"] == "items: 16 entries, the limit is 8 per request"
    long = {**rollouts()[0], "response": f"<think>{'zqxjkv' * 1300}</think><answer>second</answer>"}
    r = post(items=[rollouts()[2], long])  # only item 1 goes to the judge: the error names it, not its place there
    assert r.status_code == 413 and r.json()["detail"].startswith("items[1]: the consistency prompt is")


def trl_batch() -> dict:
    """The batch as TRL hands it to a reward function: prompts, completions, the dataset's columns, its state."""
    rows = rollouts()
    return dict(
        prompts=[[{"role": "user", "content": r["question"]}] for r in rows],  # conversational
        completions=[[{"role": "assistant", "content": r["response"]}] for r in rows],
        completion_ids=[[1, 2]] * len(rows),
        answer=[r["answer"] for r in rows],
        choices=[r["choices"] for r in rows],
        audio_path=["a.wav"] * len(rows),
        trainer_state=SimpleNamespace(global_step=STEP - 1, max_steps=TOTAL),
    )


def test_trl_reward_function_equals_audio_thinker_rewards_and_logs_the_factors(judge_url, route):
    logged: dict[str, float] = {}
    reward = trl_adapter.AudioThinkerReward(judge_url, api_key=KEY, chunk=3)  # T from trainer_state.max_steps
    got = reward(**trl_batch(), log_metric=lambda name, value: logged.update({name: value}))
    assert got == pytest.approx([s["total"] for s in route["samples"]], abs=1e-6)
    assert reward.__name__ == "audio_thinker_total"
    assert logged == pytest.approx({"audio_thinker/think_rate": route["think_rate"],
                                    "audio_thinker/gamma_think": route["gamma_think"],
                                    "audio_thinker/gamma_no_think": route["gamma_no_think"]})  # fmt: skip
    parts = trl_adapter.AudioThinkerReward(judge_url, api_key=KEY, term="think_reward", total_steps=TOTAL)
    assert parts(**trl_batch()) == pytest.approx([s["think"] for s in route["samples"]], abs=1e-6)
    with pytest.raises(KeyError, match="needs the dataset column 'answer'"):
        reward(prompts=["q"], completions=["<answer>a</answer>"], solution=["a"], step=1)
    with pytest.raises(ValueError, match="needs the training step"):
        reward(prompts=["q"], completions=["<answer>a</answer>"], answer=["a"])
    with pytest.raises(ValueError, match="term 'bonus'"):
        trl_adapter.AudioThinkerReward(judge_url, api_key=KEY, term="bonus")


def test_verl_batch_function_equals_audio_thinker_rewards(judge_url, route):
    rows = rollouts()
    infos = [{"question": r["question"], "choices": r["choices"], "global_steps": STEP, "index": i}
             for i, r in enumerate(rows)]  # fmt: skip
    kwargs = dict(judge_url=judge_url, api_key=KEY, total_steps=TOTAL)  # custom_reward_function.reward_kwargs
    got = verl_adapter.compute_score_batch(
        data_sources=["audio_qa"] * len(rows), solution_strs=[r["response"] for r in rows],
        ground_truths=[r["answer"] for r in rows], extra_infos=infos, **kwargs,
    )  # fmt: skip
    assert got == pytest.approx([s["total"] for s in route["samples"]], abs=1e-6)
    with pytest.raises(ValueError, match="'global_steps' must be one integer"):
        verl_adapter.compute_score_batch(["audio_qa"], [rows[0]["response"]], ["second"], [{"question": "q"}], **kwargs)


def test_verl_per_sample_function_is_get_reward(judge_url):
    question, response = QUESTIONS["q0"], BATCH[0][1]
    want = JudgeClient(judge_url, api_key=KEY).get_reward([question + response], [question], ["second"]).rewards[0]
    got = verl_adapter.compute_score(data_source="audio_qa", solution_str=response, ground_truth="second",
                                     extra_info={"question": question, "index": 0}, judge_url=judge_url, api_key=KEY)
    assert isinstance(got, float) and got == pytest.approx(want)
    with pytest.raises(ValueError, match="extra_info has no 'question'"):
        verl_adapter.compute_score("audio_qa", response, "second", {"index": 0}, judge_url=judge_url, api_key=KEY)


def test_a_judge_that_cannot_answer_raises_instead_of_a_zero_reward():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    reward = trl_adapter.AudioThinkerReward(url, api_key=KEY, total_steps=2, max_retries=1, timeout_s=2)
    with pytest.raises(JudgeUnavailableError, match="failed after 2 attempts"):
        reward(prompts=["q"], completions=[BATCH[0][1]], answer=["second"], step=1)
    with pytest.raises(ValueError, match="no judge URL"):
        verl_adapter.compute_score("audio_qa", BATCH[0][1], "second", {"question": "q"}, judge_url="")


def test_adapters_import_without_torch_ray_trl_or_verl():
    code = (
        "import sys, reward_server.adapters.trl, reward_server.adapters.verl; "
        "bad = {'torch', 'ray', 'trl', 'verl'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


def forced_completions(tokenizer) -> list[list]:
    """Generation biases that make the random tiny policy write think and no_think answers, right or wrong: each
    path's first token and every next token of it get a large bias (HF `sequence_bias`), sampling picks a path."""
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)
    think = enc("<think>The second beep is louder.</think>")
    paths = [think + enc("<answer>second</answer>"), think + enc("<answer>first</answer>"),
             enc("<answer>second</answer>"), enc("<answer>first</answer>")]  # fmt: skip
    bias: dict[tuple[int, ...], float] = {}
    for path in paths:
        path = [*path, tokenizer.eos_token_id]
        bias[(path[0],)] = 50.0
        bias.update(dict.fromkeys(itertools.pairwise(path), 100.0))
    return [[list(k), v] for k, v in bias.items()]


def test_trl_grpo_trainer_trains_two_steps_on_the_paper_reward(judge_url, judge_path, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    calls = []

    class Recorded(trl_adapter.AudioThinkerReward):
        def __call__(self, prompts, completions, trainer_state=None, **kwargs):
            out = super().__call__(prompts, completions, trainer_state=trainer_state, **kwargs)
            calls.append((trainer_state.global_step, [trl_adapter.as_text(c) for c in completions], out))
            return out

    tokenizer = AutoTokenizer.from_pretrained(judge_path)
    dataset = Dataset.from_list([{"prompt": QUESTIONS["q0"], "answer": "second", "choices": CHOICES}] * 2)
    args = GRPOConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, max_steps=2, num_generations=4,
        per_device_train_batch_size=4, gradient_accumulation_steps=1, max_completion_length=16,
        gradient_checkpointing=False, logging_steps=1, report_to="none", save_strategy="no", seed=0,
        generation_kwargs={"sequence_bias": forced_completions(tokenizer)},
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(judge_path), args=args, train_dataset=dataset,
        reward_funcs=[Recorded(judge_url, api_key=KEY)], processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()
    assert [step for step, _, _ in calls] == [0, 1]  # s = global_step + 1 = 1, 2 of T = max_steps = 2
    logs = [entry for entry in trainer.state.log_history if "audio_thinker/gamma_think" in entry]
    assert len(logs) == 2
    for (step, completions, rewards), entry in zip(calls, logs):
        modes = [c.startswith("<think>") for c in completions]
        assert all(c.endswith(("<answer>second</answer>", "<answer>first</answer>")) for c in completions)
        rate = sum(modes) / len(modes)
        assert entry["audio_thinker/think_rate"] == pytest.approx(rate)
        assert (entry["audio_thinker/gamma_think"], entry["audio_thinker/gamma_no_think"]) == pytest.approx(
            penalty_factors(rate, step + 1, 2), abs=1e-6)  # fmt: skip
        assert entry["rewards/audio_thinker_total/mean"] == pytest.approx(sum(rewards) / len(rewards), abs=1e-5)
