"""A non-editable install works outside the source tree: the presets, templates and dashboard pages ship as
package data and nothing reaches back into a checkout (a container, a Ray job's working dir)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_wheel_install_runs_from_another_working_directory(tmp_path):
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(site), str(ROOT)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = (
        "import audio_thinker\n"
        "from audio_thinker.core.presets import load_config\n"
        "from audio_thinker.core.protocol import load_template\n"
        "from audio_thinker.app.table1.rows import rows\n"
        "print(audio_thinker.__file__)\n"
        "print(load_config().run.name, load_config('qwen2-audio-7b').run.name, len(load_template('adaptive')),\n"
        "      rows()['model-c'].paper['mmau']['average'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    where, loaded = done.stdout.splitlines()
    assert where.startswith(str(site))  # the installed copy, not the checkout
    assert loaded.split()[:2] == ["tiny-cpu", "qwen2-audio-7b-atar-cr-tr"]
    assert loaded.split()[3] == "68.0"  # the paper's Table 1 ships as package data
    helped = subprocess.run(
        [str(site / "bin" / "audio-thinker"), "train", "--help"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert helped.returncode == 0 and "--allow-config-change" in helped.stdout
    assert (site / "audio_thinker" / "app" / "dashboard" / "templates" / "run.html").is_file()
