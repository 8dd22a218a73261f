"""Peak memory of ``multibox predict`` over huge images, with and without reduced reading.

    python -m benchmarks.predict_memory [--images 4] [--side 12000] [--batch 4]

Writes ``--images`` flat-colour RGB PNGs of ``--side`` x ``--side`` pixels (a few hundred KB
each, ``3 * side**2`` bytes decoded), then runs ``multibox predict`` on them in a fresh process
twice: as shipped (huge files read reduced) and with reduced reading switched off (the full
image decoded, as before), and prints each process's peak resident memory (VmHWM).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import sys, warnings
warnings.simplefilter("ignore")
if sys.argv[3] == "full":  # switch reduced reading off: every image decoded at full size
    import multibox.inference.images as images
    images.reading_limit = lambda size: None
    import multibox.inference.predict as predict
    predict.reading_limit = lambda size: None
from multibox.cli import main
rc = main(["predict", sys.argv[1], sys.argv[2], "--out", sys.argv[4], "--batch-size", sys.argv[5], "--no-draw"])
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(f"PEAK_MB {int(hwm) / 1024:.0f}")
sys.exit(rc)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--side", type=int, default=12000)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    from PIL import Image

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from helpers import make_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "huge")
        os.makedirs(folder)
        for i in range(args.images):
            Image.new("RGB", (args.side, args.side), (10 + 40 * i, 200, 30)).save(os.path.join(folder, f"big{i}.png"))
        ckpt = make_checkpoint(os.path.join(tmp, "m.pt"), image_size=320)
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        decoded = 3 * args.side**2 / 2**20
        print(f"{args.images} PNGs of {args.side}x{args.side} ({decoded:.0f} MB each decoded), batch {args.batch}")
        for mode in ("reduced", "full"):
            out = os.path.join(tmp, mode)
            res = subprocess.run(
                [sys.executable, "-c", textwrap.dedent(SCRIPT), ckpt, folder, mode, out, str(args.batch)],
                capture_output=True,
                text=True,
                env=env,
            )
            if res.returncode != 0:
                raise SystemExit(res.stderr[-2000:])
            peak = res.stdout.split("PEAK_MB")[1].split()[0]
            print(f"  {mode:>8} reading: peak resident memory {peak} MB")


if __name__ == "__main__":
    main()
