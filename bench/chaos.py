"""Chaos: the tiny default run while a rollout worker, the judge, the reference and a trainer rank are killed.

The built-in tiny default (4 questions x 8 samples per step, a vLLM worker, the HTTP judge actor, the reference,
one DeepSpeed rank), `--steps` steps (6), runs twice with the same seed: undisturbed first, then while each fault
SIGKILLs its actor's process at a seeded random moment: a seeded step (distinct steps for the faults), in the
phase where that actor works (generate, judge, ref log-probs, train), a seeded fraction of that phase's
undisturbed duration after it began. `--separate` gives each fault a run of its own, so that every row's last
column is about that fault alone.

Per fault it prints: when it struck (step and phase; "after" when the phase had ended first), whether the run
recovered from it (the run finished and the part's restart was counted; "not needed" when it struck an idle
actor that was not asked again), the time it cost (that step's wall
time, attempts included, minus the undisturbed step's), the steps lost (done again after a trainer restart), the
samples generated again, and whether the run's metrics (every step's rewards, accuracy, think rate, lengths,
loss, KL and the final evaluation) equal the undisturbed run's. Not a test; numbers go to the README and
docs/fault-tolerance.md.

    python bench/chaos.py [key=value ...] [--steps 6] [--seed 0] [--separate] [--faults worker judge reference trainer]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import _run_env  # noqa: F401 (the run's environment, before vLLM, DeepSpeed and Ray are imported)

import numpy as np
import ray

from audio_thinker.app.train.driver import Driver
from audio_thinker.app.train.timeline import read_events
from audio_thinker.core.presets import load_config

# fault -> the phase its actor works in and the undisturbed metric that times that phase
FAULTS = {
    "worker": ("generate", "timing_s/gen"),
    "judge": ("judge", "timing_s/judge"),
    "reference": ("ref log-probs", "timing_s/ref"),
    "trainer": ("train", "timing_s/train"),
}
COMPARED = (
    "reward/total", "reward/accuracy", "reward/format", "reward/consistency", "reward/think", "think_rate",
    "acc/overall", "count/think", "count/no_think", "count/invalid", "response_length/mean", "actor/loss",
    "actor/kl", "actor/grad_norm",
)  # fmt: skip


def getpid(_actor: object = None) -> int:
    return os.getpid()


class Chaos:
    """Watches a driver's phases (wrappers on the parts it calls) and kills each planned fault's actor in its phase.

    `plan`: fault -> (step, fraction); `durations`: (phase, step) -> the undisturbed seconds of that phase."""

    def __init__(self, driver: Driver, plan: dict[str, tuple[int, float]], durations: dict[tuple[str, int], float]):
        self.driver, self.plan, self.durations = driver, plan, durations
        self.step: int | None = None
        self.attempts: list[tuple[int, float, float, bool]] = []  # step, start, end, succeeded
        self.spans: dict[tuple[str, int], list[float]] = {}  # (phase, step) -> [begin, end] of its first run
        self.kills: dict[str, dict] = {}
        self.timers: list[threading.Timer] = []
        self.pids = self._pids() if plan else {}
        self._wrap()

    def _pids(self) -> dict[str, int]:
        d = self.driver
        return {
            "worker": d.rollout.worker_infos()[0]["pid"],
            "judge": d.judge.service.pid(),
            "reference": ray.get(d.reference.group.actors[0].__ray_call__.remote(getpid)),
            "trainer": ray.get(d.trainer.ranks.actors[0].__ray_call__.remote(getpid)),
        }

    def _wrap(self) -> None:
        d, chaos = self.driver, self
        step, stream = d.step, d.rollout.stream
        compute_ref, train_step = d.reference.compute_logprobs, d.trainer.train_step

        def timed_step(s: int) -> dict:
            chaos.step, start, ok = s, time.time(), False
            try:
                metrics = step(s)
                ok = True
                return metrics
            finally:
                chaos.attempts.append((s, start, time.time(), ok))
                chaos.step = None

        def watched_stream(*args, **kwargs):
            chaos.begin("generate")
            try:
                yield from stream(*args, **kwargs)
            finally:
                chaos.end("generate")
                chaos.begin("judge")  # the step's judge requests start as the generation ends (batch mode)

        def phase(name, fn):
            def call(*args, **kwargs):
                chaos.begin(name)
                try:
                    return fn(*args, **kwargs)
                finally:
                    chaos.end(name)

            return call

        d.step, d.rollout.stream = timed_step, watched_stream
        d.reference.compute_logprobs = phase("ref log-probs", compute_ref)
        d.trainer.train_step = phase("train", train_step)

    def begin(self, name: str) -> None:
        if self.step is None:  # the final evaluation
            return
        self.spans.setdefault((name, self.step), [time.time(), math.inf])
        for fault, (step, fraction) in self.plan.items():
            if FAULTS[fault][0] == name and step == self.step and fault not in self.kills:
                self.kills[fault] = {"step": step, "phase": name}
                delay = fraction * self.durations.get((name, step), 0.0)
                timer = threading.Timer(delay, self.kill, (fault,))
                self.timers.append(timer)
                timer.start()

    def end(self, name: str) -> None:
        if self.step is not None and self.spans.get((name, self.step), [0, 0])[1] == math.inf:
            self.spans[name, self.step][1] = time.time()

    def kill(self, fault: str) -> None:
        os.kill(self.pids[fault], signal.SIGKILL)
        self.kills[fault]["at"] = time.time()

    def step_wall(self, step: int) -> float:
        """From the first attempt's start to the successful one's end."""
        runs = [(a, b) for s, a, b, _ in self.attempts if s == step]
        return max(b for _, b in runs) - min(a for a, _ in runs)

    def landed(self, fault: str, judge_ends: dict[int, float]) -> str:
        kill = self.kills.get(fault)
        if kill is None or "at" not in kill:
            return "not struck"
        phase, step = kill["phase"], kill["step"]
        end = judge_ends.get(step, math.inf) if phase == "judge" else self.spans[phase, step][1]
        return f"step {step}, {'mid-' if kill['at'] < end else 'after '}{phase}"


def run(config_overrides: list[str], out: Path, plan: dict, durations: dict) -> dict:
    """One run of the tiny default; its metrics, the chaos record and what the parts counted."""
    config = load_config(None, [*config_overrides, f"run.output_dir={out}", "run.loggers=[]"])
    driver = Driver.from_config(config, actor_logs=out / "logs")
    try:
        chaos = Chaos(driver, plan, durations)
        t = time.time()
        error = None
        try:
            driver.train()
        except Exception as exc:  # a fault the run did not survive: reported, not raised
            error = str(exc).splitlines()[0]
        wall = time.time() - t
        for timer in chaos.timers:
            timer.join()
        judge_recoveries = driver.judge.recoveries
    finally:
        driver.close()
    lines = driver.run_dir.metrics_path.read_text().splitlines() if error is None else []
    metrics = [json.loads(line) for line in lines if line.strip()]
    judge_ends = {
        e["args"]["step"]: (e["ts"] + e["dur"]) / 1e6
        for e in read_events(driver.run_dir.timeline.path)
        if e.get("name") == "judge" and e.get("ph") == "X"
    }
    return {"metrics": metrics, "chaos": chaos, "error": error, "wall": wall, "judge_recoveries": judge_recoveries,
            "judge_ends": judge_ends, "config": config}  # fmt: skip


def differences(metrics: list[dict], reference: list[dict]) -> list[str]:
    """Keys (step: key) where a run's metrics differ from the undisturbed run's (rel 1e-5, abs 1e-6)."""
    if [m["step"] for m in metrics] != [m["step"] for m in reference]:
        return ["the steps logged"]
    out = []
    for m, r in zip(metrics, reference):
        keys = [*COMPARED, *(k for k in r if k.startswith("eval/"))]
        out += [f"{m['step']}: {k}" for k in keys if k in r and not math.isclose(m.get(k, math.nan), r[k],
                                                                                  rel_tol=1e-5, abs_tol=1e-6)]
    return out


def rows_of(result: dict, undisturbed: dict, faults: list[str]) -> list[list[str]]:
    chaos, metrics, cfg = result["chaos"], result["metrics"], result["config"]
    per_step = cfg.run.questions_per_step * cfg.rollout.samples_per_question
    total = {k: sum(m.get(k, 0) for m in metrics) for k in ("recovery/rollout_restarts",
             "recovery/regenerated_requests", "recovery/reference_restarts", "recovery/reference_retries")}  # fmt: skip
    counted = {
        "worker": total["recovery/rollout_restarts"],
        "judge": result["judge_recoveries"],
        "reference": total["recovery/reference_restarts"],
        "trainer": max((m.get("recovery/trainer_restarts", 0) for m in metrics), default=0),
    }
    kills = sorted(chaos.kills[f]["at"] for f in faults if "at" in chaos.kills.get(f, {}))
    first, again = set(), []  # steps attempted once already; (start, step) of every later attempt
    for step, start, _, _ in chaos.attempts:
        if step in first:
            again.append((start, step))
        first.add(step)
    diff = differences(metrics, undisturbed["metrics"]) if result["error"] is None else ["the run failed"]
    rows = []
    for fault in faults:
        step = chaos.plan[fault][0]
        at = chaos.kills.get(fault, {}).get("at")
        until = next((t for t in kills if at is not None and t > at), math.inf)
        lost = sorted({s for t, s in again if at is not None and at < t < until})  # steps done again after it
        regenerated = {"worker": total["recovery/regenerated_requests"] * cfg.rollout.samples_per_question,
                       "trainer": len(lost) * per_step}.get(fault, 0)  # fmt: skip
        where = chaos.landed(fault, result["judge_ends"])
        if result["error"] is None and counted[fault] > 0:
            recovered = "yes"
        elif result["error"] is None and not where.startswith("step"):
            recovered = "--"
        elif result["error"] is None and " after " in where:  # struck an idle actor that was not asked again
            recovered = "not needed"
        else:
            recovered = "no"
        cost = (chaos.step_wall(step) - undisturbed["chaos"].step_wall(step)) if result["error"] is None else math.nan
        rows.append([
            fault, where, recovered,
            f"{cost:.1f}s" if not math.isnan(cost) else "--", str(len(lost)), str(regenerated),
            "yes" if not diff else "no",
        ])  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="steps of each run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the faults' steps and moments")
    parser.add_argument("--faults", nargs="+", default=list(FAULTS), choices=list(FAULTS),
                        help="faults to strike (default: all four)")  # fmt: skip
    parser.add_argument("--separate", action="store_true", help="one disturbed run per fault")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run (key=value)")
    args = parser.parse_args()
    if args.steps < len(args.faults):
        parser.error(f"--steps must be at least {len(args.faults)}: each fault strikes in a step of its own")
    rng = np.random.default_rng(args.seed)
    steps = rng.choice(np.arange(1, args.steps + 1), size=len(args.faults), replace=False)
    plan = {f: (int(s), float(rng.uniform(0.1, 0.5))) for f, s in zip(args.faults, steps)}
    print("plan: " + ", ".join(f"{f} at step {s}, {x:.0%} into {FAULTS[f][0]}" for f, (s, x) in plan.items()),
          flush=True)  # fmt: skip
    overrides = [*args.overrides, f"run.total_steps={args.steps}"]
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp:
        undisturbed = run(overrides, Path(tmp) / "undisturbed", {}, {})
        if undisturbed["error"]:
            raise SystemExit(f"the undisturbed run failed: {undisturbed['error']}")
        durations = {(FAULTS[f][0], m["step"]): m.get(FAULTS[f][1], 0.0) for f in FAULTS
                     for m in undisturbed["metrics"]}  # fmt: skip
        print(f"undisturbed: {args.steps} steps in {undisturbed['wall']:.1f}s", flush=True)
        plans = [{f: plan[f]} for f in args.faults] if args.separate else [plan]
        rows = []
        for k, part in enumerate(plans):
            result = run(overrides, Path(tmp) / f"chaos-{k}", part, durations)
            print(f"disturbed ({', '.join(part)}): {result['wall']:.1f}s" +
                  (f"; failed: {result['error']}" if result["error"] else ""), flush=True)  # fmt: skip
            for line in differences(result["metrics"], undisturbed["metrics"])[:5] if not result["error"] else []:
                print(f"  differs from the undisturbed run at {line}")
            rows += rows_of(result, undisturbed, list(part))
    header = ["fault", "when", "recovered", "time to recover", "steps lost", "samples regenerated", "metrics equal"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\ntiny default, {args.steps} steps, seed {args.seed}" + (", one run per fault" if args.separate else ""))
    for line in (header, ["-" * w for w in widths], *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)))


if __name__ == "__main__":
    main()
