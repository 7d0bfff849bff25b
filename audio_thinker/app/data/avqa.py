"""`audio-thinker prepare-avqa`: AVQA's annotations and videos -> the R1-AQA jsonl that training reads.

AVQA (Yang et al., ACM MM 2022) ships `train_qa.json` / `val_qa.json`: a JSON list of rows with `id`,
`video_name` (the VGGSound clip, e.g. "-HG3Omg_89c_000030"), `video_id`, `question_text`, `multi_choice`
(4 strings), `answer` (index), `question_relation`, `question_type`. The videos are VGGSound's
`<video_name>.mp4`. R1-AQA (xiaomi-research/r1-aqa) trains on the same rows with `dataset_name` and
`audio_path` (the extracted wav) added; so does this command:

- each distinct video's first audio track is decoded with PyAV (FFmpeg), averaged to mono and resampled with
  soxr to 16 kHz, written as `<out>/audio/<video_name>.wav` (PCM_16) through a temporary file, so a wav that
  exists is complete and a rerun does not redo it (resume);
- "video" becomes "audio" in `question_text` (the model hears the sound track only);
- `<out>/<split>.jsonl` keeps the annotation order and every original field; `audio_path` is relative to
  `<out>` (training: `data.audio_root=<out>`);
- `<out>/<split>-report.json` counts and lists every row left out and why: a row that does not validate, a
  video that is missing, has no audio track or cannot be decoded. Nothing is dropped without a line there.

The same inputs give the same bytes (decoding and resampling are deterministic, the order is the annotations').
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soxr

from audio_thinker.app.data.options import AvqaOptions
from audio_thinker.core.audio import SAMPLE_RATE, write_audio
from audio_thinker.core.log import get_logger
from audio_thinker.core.manifests import DataError, read_rows, row_object, video_to_audio
from audio_thinker.core.progress import progress

log = get_logger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")  # VGGSound ships mp4; re-encoded copies vary
AUDIO_DIR = "audio"


class NoAudioError(ValueError):
    """A video without an audio track."""


@dataclass(frozen=True)
class Extraction:
    """The outcome for one video: `error` is None when its wav exists."""

    video_name: str
    error: str | None = None
    kind: str = "ok"  # ok | missing | no_audio | corrupt
    skipped: bool = False  # the wav existed already (resume)


def decode_audio(path: Path) -> np.ndarray:
    """The first audio track of a media file as float32 mono at 16 kHz (channels averaged, soxr HQ)."""
    with av.open(str(path)) as container:
        streams = container.streams.audio
        if not streams:
            raise NoAudioError("no audio track")
        stream = streams[0]
        rate = stream.codec_context.sample_rate or stream.rate
        # Planar float at the track's own rate: one row per channel; the down-mix is ours (as load_audio's).
        resampler = av.AudioResampler(format="fltp", rate=rate)
        chunks = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
        chunks.extend(out.to_ndarray() for out in resampler.resample(None))
    if not chunks or sum(c.shape[1] for c in chunks) == 0:
        raise NoAudioError("the audio track holds no samples")
    mono = np.concatenate(chunks, axis=1).astype(np.float32).mean(axis=0)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return np.clip(mono, -1.0, 1.0).astype(np.float32)


def find_video(videos: Path, video_name: str) -> Path | None:
    return next((p for s in VIDEO_SUFFIXES if (p := videos / f"{video_name}{s}").is_file()), None)


def extract_one(videos: str, audio_dir: str, video_name: str) -> Extraction:
    """Decode one video into `audio_dir/<video_name>.wav` unless that wav exists (runs in a worker process)."""
    wav = Path(audio_dir) / f"{video_name}.wav"
    if wav.is_file():
        return Extraction(video_name, skipped=True)
    video = find_video(Path(videos), video_name)
    if video is None:
        tried = "|".join(s.lstrip(".") for s in VIDEO_SUFFIXES)
        return Extraction(video_name, f"video not found: {Path(videos) / video_name}.{{{tried}}}", "missing")
    try:
        audio = decode_audio(video)
    except NoAudioError as exc:
        return Extraction(video_name, f"{video}: {exc}", "no_audio")
    except (av.FFmpegError, ValueError, OSError) as exc:
        return Extraction(video_name, f"{video}: cannot be decoded ({type(exc).__name__}: {exc})", "corrupt")
    tmp = wav.with_name(f".tmp-{os.getpid()}-{wav.name}")
    write_audio(tmp, audio, SAMPLE_RATE)
    tmp.replace(wav)
    return Extraction(video_name)


def read_annotations(path: Path) -> tuple[list[dict], list[dict]]:
    """The rows that validate (as R1-AQA rows without `audio_path`) and the rows that do not (row, reason)."""
    rows, bad = [], []
    for row, data in read_rows(path):
        try:
            r = row_object(path, row, data)
            r.ident("id")
            name = r.text("video_name", numbers=True)
            choices = r.choice_list("multi_choice")
            index = r.integer("answer")
            if not 0 <= index < len(choices):
                raise r.error(f"field 'answer': index {index} is outside multi_choice (0..{len(choices) - 1})")
            if "/" in name or name in (".", ".."):
                raise r.error(f"field 'video_name' {name!r} is not a file name")
            question = video_to_audio(r.text("question_text"))
        except DataError as exc:
            bad.append({"row": row, "reason": str(exc)})
            continue
        rows.append({**data, "video_name": name, "question_text": question, "dataset_name": "AVQA"})
    return rows, bad


def prepare_avqa(options: AvqaOptions) -> dict:
    """Extract the audio, write the manifest and the report; returns the report."""
    videos, annotations, out = Path(options.videos), Path(options.annotations), Path(options.out)
    if not videos.is_dir():
        raise FileNotFoundError(f"--videos {videos} is not a folder")
    if not annotations.is_file():
        raise FileNotFoundError(f"--annotations {annotations} is not a file")
    rows, bad_rows = read_annotations(annotations)
    if not rows:  # an empty file, not JSON, or no row in AVQA's layout: nothing to extract, no manifest to write
        first = f"{len(bad_rows)} invalid, the first: {bad_rows[0]['reason']}" if bad_rows else "it holds no rows"
        raise DataError(f"--annotations {annotations}: no valid AVQA row ({first})")
    names = sorted({r["video_name"] for r in rows})
    audio_dir = out / AUDIO_DIR
    audio_dir.mkdir(parents=True, exist_ok=True)

    results: dict[str, Extraction] = {}
    workers = min(options.workers or os.cpu_count() or 1, max(1, len(names)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(extract_one, str(videos), str(audio_dir), n) for n in names]
        for future in progress(as_completed(futures), desc="extracting audio", total=len(futures), unit="video"):
            result = future.result()
            results[result.video_name] = result

    failed = {n: r for n, r in results.items() if r.error is not None}
    kept, dropped = [], []
    for r in rows:
        failure = failed.get(r["video_name"])
        if failure is None:
            kept.append({**r, "audio_path": f"{AUDIO_DIR}/{r['video_name']}.wav"})
        else:
            dropped.append({"id": r["id"], "video_name": r["video_name"], "reason": failure.kind})
    manifest = out / f"{options.split}.jsonl"
    _write_atomic(manifest, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))

    kinds = [r.kind for r in failed.values()]
    report = {
        "annotations": str(annotations),
        "manifest": str(manifest),
        "rows": len(rows) + len(bad_rows),
        "rows_written": len(kept),
        "rows_invalid": len(bad_rows),
        "rows_without_audio": len(dropped),
        "videos": len(names),
        "videos_extracted": sum(1 for r in results.values() if r.error is None and not r.skipped),
        "videos_already_done": sum(1 for r in results.values() if r.skipped),
        "videos_missing": kinds.count("missing"),
        "videos_no_audio": kinds.count("no_audio"),
        "videos_corrupt": kinds.count("corrupt"),
        "failed_videos": [{"video_name": n, "kind": failed[n].kind, "error": failed[n].error} for n in sorted(failed)],
        "invalid_rows": bad_rows,
        "rows_left_out": dropped,
    }
    _write_atomic(out / f"{options.split}-report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if failed or bad_rows:
        log.warning(
            "%s: %d of %d rows left out (%d invalid, %d videos missing, %d without audio, %d corrupt); see %s",
            annotations,
            len(dropped) + len(bad_rows),
            report["rows"],
            len(bad_rows),
            report["videos_missing"],
            report["videos_no_audio"],
            report["videos_corrupt"],
            out / f"{options.split}-report.json",
        )
    return report


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
