#!/usr/bin/env python3
"""Real datasets that Python packages ship, for Sluice's tests and demos.

    python3 deploy/local/datasets.py digits   # prints the path of digits.csv

`digits`: scikit-learn's copy of the UCI optical handwritten digits (1,797 images of 8x8 pixels,
values 0-16, ten classes; one row per image, 64 pixel values then the label). The scikit-learn
wheel is downloaded once with pip (no install, no dependencies) into a project-local, git-ignored
directory, and the CSV is extracted into ~/.cache/sluice/datasets/, where later runs find it.
"""

import gzip
import pathlib
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
WHEELS = ROOT / ".sluice" / "wheels"
CACHE = pathlib.Path.home() / ".cache" / "sluice" / "datasets"
SKLEARN = "scikit-learn==1.9.1"


def digits() -> pathlib.Path:
    target = CACHE / "digits.csv"
    if target.exists():
        return target
    WHEELS.mkdir(parents=True, exist_ok=True)
    wheels = sorted(WHEELS.glob("scikit_learn-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", SKLEARN, "--no-deps", "--only-binary=:all:", "-d", str(WHEELS)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wheels = sorted(WHEELS.glob("scikit_learn-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        rows = gzip.decompress(wheel.read("sklearn/datasets/data/digits.csv.gz")).decode()
    if len(rows.strip().splitlines()) != 1797:
        raise SystemExit("unexpected digits.csv: not 1,797 rows")
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_text(rows)
    partial.replace(target)
    return target


if __name__ == "__main__":
    if sys.argv[1:] != ["digits"]:
        raise SystemExit(__doc__)
    print(digits())
