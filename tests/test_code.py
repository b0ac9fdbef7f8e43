"""The code itself: no name used that is never bound (a function cut away by an edit that no
test reaches), no import unused or bound twice; pyflakes over the package, the scripts, the
tools and the tests. A line marked `# noqa` is exempt."""
import os
import subprocess
import sys

from conftest import ROOT


def test_pyflakes_finds_nothing():
    paths = ["unmix_nnabla", "tools", "tests"] + sorted(
        f for f in os.listdir(ROOT) if f.endswith(".py"))
    proc = subprocess.run([sys.executable, "-m", "pyflakes"] + paths, capture_output=True,
                          text=True, cwd=ROOT)
    found = []
    for report in proc.stdout.splitlines():
        path, line = report.split(":")[:2]
        with open(os.path.join(ROOT, path)) as source:
            if "# noqa" not in source.read().splitlines()[int(line) - 1]:
                found.append(report)
    assert proc.stderr == "" and found == [], "\n".join(found) + proc.stderr
