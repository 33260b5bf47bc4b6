"""`adaptbench data prepare` on a 300 MB JSONL file keeps its memory far below the file's size:
the file is read as it streams, twice, and only a few bytes per row are held."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

LABELS = ["billing", "shipping", "returns", "account", "other"]
ROWS = 300_000         # of ~1 KB each: ~300 MB
REPEAT_EVERY = 1000    # every 1000th row repeats the text and label of the row 500 before it
MAX_RSS = 250 * 2**20  # bytes: the whole file would not fit


def write_big(path) -> int:
    """ROWS label rows; the number of exact repeats planted."""
    filler = " ".join(f"word{i % 97} thing{i % 89}" for i in range(120))  # ~1.9 KB to take slices of
    repeats = 0
    with path.open("w", buffering=1 << 22) as f:
        chunk = []
        for i in range(ROWS):
            j = i - 500 if i % REPEAT_EVERY == REPEAT_EVERY - 1 else i
            repeats += j != i
            text = f"ticket {j}: {filler[j % 800:j % 800 + 960]}"
            chunk.append(json.dumps({"id": f"t{i}", "text": text, "label": LABELS[j % 5]}) + "\n")
            if len(chunk) == 10_000:
                f.write("".join(chunk))
                chunk = []
        f.write("".join(chunk))
    return repeats


def test_a_300_mb_file_is_prepared_in_bounded_memory(tmp_path):
    big, out = tmp_path / "big.jsonl", tmp_path / "out"
    repeats = write_big(big)
    size = big.stat().st_size
    assert size > 280 * 2**20
    # The child reports its own peak: VmHWM of the process after exec. (ru_maxrss of a child,
    # from wait4 or RUSAGE_CHILDREN, starts from the parent's size at fork on Linux, and this
    # parent is a pytest process of several GB by the time the suite gets here.)
    hwm = tmp_path / "hwm"
    wrapper = ("import atexit, re, runpy, sys\n"
               "out = sys.argv[1]\n"
               "atexit.register(lambda: open(out, 'w').write(re.search(r'VmHWM:\\s+(\\d+)', "
               "open('/proc/self/status').read()).group(1)))\n"
               "sys.argv = ['adaptbench'] + sys.argv[2:]\n"
               "runpy.run_module('toolkit.cli', run_name='__main__')\n")
    cmd = [sys.executable, "-c", wrapper, str(hwm), "data", "prepare", str(big), str(out), "--format", "label",
           "--split", "0.8/0.1/0.1", "--stratify", "--dedupe", "exact", "--quiet"]
    t0 = time.perf_counter()
    with (tmp_path / "log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "ADAPTBENCH_QUIET": "1"})
        proc.wait()
    seconds = time.perf_counter() - t0
    rss = int(hwm.read_text()) * 1024  # kB in /proc
    print(f"\nprepare of {size / 2**20:.0f} MB: {seconds:.1f} s, peak RSS {rss / 2**20:.0f} MB")
    assert proc.returncode == 0, (tmp_path / "log").read_text()[-3000:]
    assert rss < MAX_RSS and rss < size / 2, f"peak RSS {rss / 2**20:.0f} MB for a {size / 2**20:.0f} MB file"

    report = json.loads((out / "prepare_report.json").read_text())
    kept = ROWS - repeats
    assert report["rows_read"] == ROWS and report["dropped"]["exact_duplicates"]["count"] == repeats
    assert report["rows_written"] == {"train": kept - 2 * round(kept / 10), "validation": round(kept / 10),
                                      "test": round(kept / 10)}
    for split, n in report["rows_written"].items():
        with (out / f"{split}.jsonl").open("rb") as f:
            assert sum(1 for _ in f) == n
    share = {lab: n / report["rows_written"]["test"] for lab, n in report["labels"]["test"].items()}
    assert all(abs(s - 0.2) < 0.001 for s in share.values()), share
