"""The TRL and verl reward functions against a live judge (uvicorn on 127.0.0.1, the tiny Qwen3 judge), called
the way those frameworks call them (keyword names and shapes from their docs; neither package is needed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from audio_thinker.core.net import free_port
from reward_server.adapters import trl as trl_adapter
from reward_server.adapters import verl as verl_adapter
from reward_server.app import ServerSettings
from reward_server.backends import TransformersBackend
from reward_server.cli import ServerThread, build_server
from reward_server.client import JudgeClient, JudgeUnavailableError

KEY = "adapter-key"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPT = "Which of the two beeps is louder?"
COMPLETIONS = [
    "<think>The second beep has the larger amplitude.</think><answer>second</answer>",  # think, correct
    "<think>The first one fades.</think><answer>first</answer>",  # think, wrong
    "<answer>second</answer>",  # no_think, correct
    "the second one",  # invalid
]


@pytest.fixture(scope="module")
def judge_url(tiny_models):
    path = str(tiny_models["qwen3_judge"])
    settings = ServerSettings(api_keys=frozenset({KEY}), max_items=8)
    thread = ServerThread(build_server(lambda: TransformersBackend(path, device="cpu"), settings, port=0))
    url = thread.start()
    JudgeClient(url).wait_ready(120)
    yield url
    thread.stop(60)


def direct(url: str, prompts: list[str], completions: list[str], labels: list[str]):
    return JudgeClient(url, api_key=KEY).get_reward([p + c for p, c in zip(prompts, completions)], prompts, labels)


def test_trl_reward_function_called_like_grpo_trainer_calls_it(judge_url):
    reward = trl_adapter.JudgeReward(judge_url, api_key=KEY, label_column="answer", chunk=2)
    n = len(COMPLETIONS)
    # GRPOTrainer: reward_func(prompts=..., completions=..., completion_ids=..., **dataset columns, trainer_state)
    got = reward(
        prompts=[PROMPT] * n,
        completions=COMPLETIONS,
        completion_ids=[[1, 2]] * n,
        answer=["second"] * n,
        audio_path=["a.wav"] * n,
        trainer_state=None,
    )
    # One /get_reward per chunk of 2 (a no_think sample gets the mean R_t of its own request's think samples).
    want = [direct(judge_url, [PROMPT] * 2, COMPLETIONS[i : i + 2], ["second"] * 2).rewards for i in (0, 2)]
    assert len(got) == n and all(isinstance(x, float) for x in got)
    assert got == pytest.approx(want[0] + want[1])
    assert reward.__name__ == "audio_thinker_judge_total"


def test_trl_conversational_format_and_a_term(judge_url):
    reward = trl_adapter.JudgeReward(judge_url, api_key=KEY, term="format_reward")
    prompts = [[{"role": "user", "content": PROMPT}]] * 4
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    assert reward(prompts=prompts, completions=completions, answer=["second"] * 4) == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(KeyError, match="needs the dataset column 'answer'"):
        reward(prompts=prompts, completions=completions, solution=["second"] * 4)
    with pytest.raises(ValueError, match="term 'bonus'"):
        trl_adapter.JudgeReward(judge_url, api_key=KEY, term="bonus")


def test_verl_compute_score_called_like_the_reward_managers_call_it(judge_url):
    want = direct(judge_url, [PROMPT], COMPLETIONS[:1], ["second"]).rewards[0]
    kwargs = dict(judge_url=judge_url, api_key=KEY)  # custom_reward_function.reward_kwargs
    got = verl_adapter.compute_score(
        data_source="audio_qa",
        solution_str=COMPLETIONS[0],
        ground_truth="second",
        extra_info={"question": PROMPT, "index": 0},
        **kwargs,
    )
    assert isinstance(got, float) and got == pytest.approx(want)
    batch = verl_adapter.compute_score_batch(
        data_sources=["audio_qa"] * 4,
        solution_strs=COMPLETIONS,
        ground_truths=["second"] * 4,
        extra_infos=[{"question": PROMPT}] * 4,
        **kwargs,
    )
    assert batch == pytest.approx(direct(judge_url, [PROMPT] * 4, COMPLETIONS, ["second"] * 4).rewards)
    with pytest.raises(ValueError, match="extra_info has no 'question'"):
        verl_adapter.compute_score("audio_qa", COMPLETIONS[0], "second", {"index": 0}, **kwargs)


def test_a_judge_that_cannot_answer_raises_instead_of_a_zero_reward():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    reward = trl_adapter.JudgeReward(url, api_key=KEY, max_retries=1, timeout_s=2)
    with pytest.raises(JudgeUnavailableError, match="failed after 2 attempts"):
        reward(prompts=[PROMPT], completions=COMPLETIONS[:1], answer=["second"])
    with pytest.raises(ValueError, match="no judge URL"):
        verl_adapter.compute_score("audio_qa", COMPLETIONS[0], "second", {"question": PROMPT}, judge_url="")


def test_adapters_import_without_torch_ray_trl_or_verl():
    code = (
        "import sys, reward_server.adapters.trl, reward_server.adapters.verl; "
        "bad = {'torch', 'ray', 'trl', 'verl'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
