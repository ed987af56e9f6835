"""bench/gpu_suite.py --smoke: every GPU-suite section that can run on CPU gives real numbers, and
the CUDA-only ones say why they were skipped, so the script cannot rot between GPU runs."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ("full_ft_medtune", "full_ft_trl", "lora_8b", "packing_off", "packing_on", "dpo")
CUDA_ONLY = ("qlora_8b", "liger")


@pytest.mark.slow
def test_gpu_suite_smoke_run_gives_numbers_or_a_skip_reason(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_suite.py"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_suite.json").read_text(encoding="utf-8"))
    sections = report["sections"]
    assert not [name for name, s in sections.items() if "error" in s], sections
    assert sections["peak"]["peak_tflops"] > 0
    for name in TRAINED:
        s = sections[name]
        assert s["tokens_per_s"] > 0 and s["mfu"] > 0 and math.isfinite(s["loss"]), (name, s)
        assert s["steps"] > report["settings"]["warm"]
    for name in CUDA_ONLY:
        assert sections[name]["skipped"].startswith("skipped: ") and "CUDA" in sections[name]["skipped"]
    merge = sections["merge"]
    assert math.isfinite(merge["loss"]) and merge["reload_4bit"].startswith("skipped: ")
    assert report["ratios"]["medtune_vs_trl"] > 0 and report["ratios"]["packing_on_vs_off"] > 0
    assert report["ratios"]["liger_on_vs_off"] is None
    assert proc.stdout.rstrip().splitlines()[-1].startswith("liger_peak_mem_on_vs_off")  # the table prints last
    assert "| section | tokens/s | MFU |" in proc.stdout
