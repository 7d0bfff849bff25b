"""Run one `audio-thinker` command to completion: a Ray job when RAY_ADDRESS is set, else a local process.

The two paths run the same command line, so what the tests run locally is what a cluster runs as a job.
A job's paths must be ones the cluster sees (shared storage); the caller passes absolute ones.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time

from ray.job_submission import JobStatus, JobSubmissionClient

from audio_thinker.core.log import get_logger

log = get_logger(__name__)
JOB_POLL_S = 5.0


def run_command(args: list[str]) -> int:
    """`audio-thinker ARGS...` to completion; its exit code (a Ray job: 0 when it SUCCEEDED, else 1)."""
    address = os.environ.get("RAY_ADDRESS")
    if address:
        return _run_job(args, address)
    command = [sys.executable, "-m", "audio_thinker.app.cli.main", *args]
    log.info("running: audio-thinker %s", shlex.join(args))
    return subprocess.run(command, check=False).returncode


def _run_job(args: list[str], address: str) -> int:
    client = JobSubmissionClient(address)
    entrypoint = shlex.join(["audio-thinker", *args])
    job = client.submit_job(entrypoint=entrypoint)
    log.info("submitted Ray job %s: %s (follow it: ray job logs -f %s)", job, entrypoint, job)
    while (status := client.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(JOB_POLL_S)
    if status != JobStatus.SUCCEEDED:
        tail = "\n".join(client.get_job_logs(job).splitlines()[-20:])
        log.error("Ray job %s %s; the end of its log:\n%s", job, status.value, tail)
        return 1
    return 0
