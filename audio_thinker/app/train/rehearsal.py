"""`--rehearse`: a GPU preset's whole distributed system run here, on tiny models (docs/placement.md).

Everything that shapes the system stays the preset's: ranks, workers, the judge's backend, the reference's
placement, the placement groups and their bundles, the ZeRO stage, micro-batch and accumulation, the sync method
and its buckets, streaming and staleness, call deadlines. Only what cannot run on this machine is swapped:

- config keys (`config_swaps`): the models for the family's tiny ones, bfloat16 for float32, missing data for the
  synthetic set, the long generation budget and the held-out evaluation for short ones, and the rollout workers'
  and judge's start-up deadlines for the trainer's (every actor starts at once on 2 cores). The swapped values are
  the run's config (config.yaml, so that a resume and `report` read back the run that ran); the topology keys are
  never among them.
- the machine (`machine_swaps`): real GPUs for GPUs declared by a local Ray cluster (`DeclaredCluster`), CUDA for
  the CPU in every actor (core/devices.py), NCCL for gloo, the CPU shares' threads for one thread per actor,
  vLLM's GPU memory share for a CPU KV cache.

The CLI prints the swaps once and `RehearsalRecord` keeps them, with every check's result, in the run
directory's `rehearsal.json`. The checks themselves: app/train/rehearsal_checks.py.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from audio_thinker.core.config import Config
from audio_thinker.core.data import COT_SPLIT_SUFFIX
from audio_thinker.core.devices import THREADS_ENV, cpu_only_env
from audio_thinker.core.placement import GroupSpec, run_groups, totals
from audio_thinker.core.presets import PRESET_DIR, load_config, preset_names, read_yaml


RECORD_FILE = "rehearsal.json"


@dataclass(frozen=True)
class Swap:
    """One value the rehearsal changes: a config key, or a part of the machine, from the preset's to its own."""

    what: str
    preset: Any
    rehearsal: Any
    why: str

    def line(self) -> str:
        return f"  {self.what}: {self.preset} -> {self.rehearsal} ({self.why})"


@dataclass(frozen=True)
class DeclaredCluster:
    """The local Ray cluster of a rehearsal: the preset's GPUs and enough CPUs for every bundle, declared (this
    machine has neither), and the environment every process of the run gets (core/devices.py, core/threads.py)."""

    cpus: int
    gpus: int

    @property
    def env(self) -> dict[str, str]:
        return {**cpu_only_env(), THREADS_ENV: "1"}


def gpu_presets() -> list[str]:
    """The packaged presets a rehearsal is for: those that declare GPUs (`run.num_gpus` > 0) and are no other
    preset's `base:` (paper-base, sft-base)."""
    names = preset_names()
    bases = {str(read_yaml(PRESET_DIR / f"{n}.yaml").get("base", "")).removesuffix(".yaml") for n in names}
    return [n for n in names if n not in bases and load_config(n).run.num_gpus > 0]


def trainer_groups(config: Config) -> list[GroupSpec]:
    """`sft`'s placement: the trainer ranks only, each with its whole share (no rollout workers, judge or
    reference, so nothing is colocated on rank 0)."""
    alone = config.model_copy(update={"reference": config.reference.model_copy(update={"placement": "separate"})})
    return [g for g in run_groups(alone, with_judge=False) if g.role("trainer")]


def declared_cluster(config: Config, groups: list[GroupSpec]) -> DeclaredCluster:
    """`run.num_gpus` GPUs (at least what the groups reserve) and the groups' CPUs plus one trainer rank's share:
    the one-rank update the first step is compared with runs beside the run's bundles."""
    need = totals(groups)
    gpus = max(config.run.num_gpus, math.ceil(need["GPU"]))
    return DeclaredCluster(cpus=math.ceil(need["CPU"] + config.trainer.num_cpus_per_rank), gpus=gpus)


def rehearsal_cluster(config: Config, sft: bool = False, with_judge: bool = True) -> DeclaredCluster | None:
    """The cluster a run declares: a rehearsal's (`run.rehearse`; `sft`: its trainer ranks only; `with_judge`:
    whether the run starts a judge), else None (a run uses what its machines have)."""
    if not config.run.rehearse:
        return None
    return declared_cluster(config, trainer_groups(config) if sft else run_groups(config, with_judge=with_judge))


def _data_missing(config: Config) -> bool:
    d = config.data
    return any(m and not Path(m).is_file() for m in (d.train_manifest, d.eval_manifest))


def config_swaps(config: Config, keep: set[str] = frozenset(), sft: bool = False) -> list[Swap]:
    """The config keys a rehearsal of `config` changes, except those in `keep` (set on the command line); `sft`:
    for `audio-thinker sft`, which has no judge, generation or held-out evaluation to swap."""
    tiny = Config()  # the built-in defaults are the tiny CPU run
    m, d, r = config.model, tiny.data, config.rollout
    synthetic = Path(d.audio_root)
    train = Path(d.train_manifest)
    if config.sft.target == "cot":  # the synthetic split with a rationale per row (app/data/demo.py writes it)
        train = train.with_name(f"{train.stem}{COT_SPLIT_SUFFIX}.jsonl")
    wanted = [
        ("model.policy_path", str(Path(tiny.model.policy_path).parent / m.family), "no 7B checkpoint runs here: "
         "the family's tiny model, built where missing"),
        ("model.make_tiny_if_missing", True, "the tiny models are built where missing"),
        ("model.tiny_warmup_steps", tiny.model.tiny_warmup_steps, "the tiny policy's format warm-up, so that think "
         "answers reach the judge"),
        ("model.dtype", "float32", "bfloat16 is the GPU dtype; the trainer on the CPU runs float32"),
    ]
    if not sft:
        slowest = config.trainer.startup_timeout_s  # start-up deadlines only: call deadlines stay the preset's
        starting = "every actor starts at once on this machine's cores, not on CPUs of its own: the trainer's deadline"
        wanted += [
            ("rollout.startup_timeout_s", max(r.startup_timeout_s, slowest), starting),
            ("judge.startup_timeout_s", max(config.judge.startup_timeout_s, slowest), starting),
            ("model.judge_path", tiny.model.judge_path, "the tiny Qwen3 judge"),
            ("rollout.max_new_tokens", min(r.max_new_tokens, tiny.rollout.max_new_tokens), "short completions: a "
             "long budget costs minutes per step on 2 cores"),
            ("run.eval_limit", 1, "one held-out question proves the evaluation path"),
        ]
        if r.engine == "vllm":
            wanted.append(("rollout.tensor_parallel_size", 1, "vLLM's CPU backend runs no tensor parallelism under "
                           "Ray (it refuses the Ray executor); each worker keeps its rollout.num_gpus_per_worker GPUs, "
                           "so the placement stays the preset's"))  # fmt: skip
    if _data_missing(config):
        why = "the preset's data is not on this machine: the synthetic set, written where missing"
        wanted += [
            ("data.train_manifest", str(train), why),
            ("data.audio_root", str(synthetic), why),
            ("data.make_synthetic_if_missing", True, why),
        ]
        if config.data.eval_manifest is not None and not sft:
            wanted += [("data.eval_manifest", d.eval_manifest, why), ("data.eval_format", d.eval_format, why),
                       ("data.eval_audio_root", d.eval_audio_root, why)]
    swaps = []
    for key, value, why in wanted:
        section, name = key.split(".")
        now = getattr(getattr(config, section), name)
        if key not in keep and now != value:
            swaps.append(Swap(key, now, value, why))
    return swaps


def machine_swaps(config: Config, cluster: DeclaredCluster, with_rollout: bool) -> list[Swap]:
    """What the rehearsal changes about the machine: it is not in the config, so it is recorded apart."""
    c = config
    shares = f"trainer ranks {c.trainer.num_cpus_per_rank:g}"
    if with_rollout:
        shares += f", rollout workers {c.rollout.num_cpus_per_worker:g}, judge {c.judge.num_cpus:g}"
    swaps = [
        Swap("GPUs", f"{c.run.num_gpus} real GPUs", f"{cluster.gpus} GPUs and {cluster.cpus} CPUs declared by a local "
             "Ray cluster", "Ray places actors by what a node declares: the placement groups, bundles and shares "
             "stay the preset's, and Ray still gives each actor its GPU ids"),
        Swap("compute device", "the actor's CUDA GPU", "the CPU in every actor (" + ", ".join(
            f"{k}={v}" for k, v in cpu_only_env().items()) + ")", "no GPU on this machine"),
        Swap("collectives", "NCCL (DeepSpeed" + (", weight broadcast)" if with_rollout else ")"), "gloo",
             "NCCL needs GPUs"),
        Swap("CPU threads per actor", f"the whole CPUs of its share ({shares})", f"1 ({THREADS_ENV}=1)",
             f"the shares are declared; this machine has {os.cpu_count()} cores"),
    ]
    if with_rollout and "vllm" in (c.rollout.engine, c.judge.backend):
        share = f"rollout.gpu_memory_utilization={c.rollout.gpu_memory_utilization:g} of a GPU"
        swaps.append(Swap("vLLM memory", share, "a KV cache of 64 full-length sequences in CPU memory per engine "
                          "(core/models.cpu_kv_cache_bytes)", "vLLM's CPU backend keeps its KV cache in CPU memory"))
    return swaps


def rehearsal_config(
    path: str | None, overrides: list[str] | tuple[str, ...], sft: bool = False
) -> tuple[Config, list[Swap]]:
    """The config of a rehearsal of `path` (a preset or file) with `overrides`, and the keys it swapped; a key set
    on the command line is never swapped. The preset's topology keys are kept as they are."""
    given = load_config(path, overrides)
    keep = {o.partition("=")[0].strip() for o in overrides}
    swaps = config_swaps(given, keep, sft)
    texts = [f"{s.what}={json.dumps(s.rehearsal)}" for s in swaps]
    return load_config(path, [*texts, *overrides, "run.rehearse=true"]), swaps


class RehearsalRecord:
    """`<run>/rehearsal.json`: the preset, the swaps and the declared cluster (written once, when the rehearsal
    starts) and every check's result as it is made (appended, the file replaced atomically)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / RECORD_FILE

    def read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.is_file() else {"swaps": [], "checks": []}

    def start(self, preset: str | None, swaps: list[Swap], cluster: DeclaredCluster) -> None:
        self._write({"preset": preset, "swaps": [asdict(s) for s in swaps], "cluster": asdict(cluster),
                     "started": time.time(), "checks": []})  # fmt: skip

    def add_check(self, result: dict) -> None:
        data = self.read()
        data.setdefault("checks", []).append(result)
        self._write(data)

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        tmp.replace(self.path)
