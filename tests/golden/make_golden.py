"""Write the checked-in golden .wsnm files, one per codec: `python tests/golden/make_golden.py`.

The masks come from Python's `random.Random` (its sequence is stable across Python versions), so
tests regenerate them exactly and check that the files still decode to them and re-encode to the
same bytes. Rewrite the files only on purpose (a format version bump), never to make a test pass.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np

GOLDEN_DIR = Path(__file__).resolve().parent
SEED = 20220717
TASK_IDS = [3, 1, 4, 5, 9, 2, 6, 8, 7]  # 9 tasks: paper-huffman gets a full and a partial group
SHAPES = {"conv1": (4, 3, 3), "fc1": (50,), "fc2": (2, 0), "head_gate": (1,)}
META = {"note": "golden file", "seed": SEED}


def golden_layers():
    """Correlated masks like WSN's: a persistent score per weight plus noise, top ~30% per task."""
    from formats import LayerMasks

    rnd = random.Random(SEED)
    layers = []
    for name, shape in SHAPES.items():
        n = int(np.prod(shape))
        score = [rnd.gauss(0.0, 1.0) for _ in range(n)]
        masks = []
        for _ in TASK_IDS:
            noisy = [abs(s + 0.5 * rnd.gauss(0.0, 1.0)) for s in score]
            keep = sorted(range(n), key=lambda i: (-noisy[i], i))[: round(0.3 * n)]
            mask = np.zeros(n, dtype=bool)
            mask[keep] = True
            masks.append(mask)
        layers.append(LayerMasks(name, shape, masks))
    return layers


def golden_path(codec: str) -> Path:
    return GOLDEN_DIR / f"{codec}.wsnm"


def main() -> None:
    sys.path.insert(0, str(GOLDEN_DIR.parents[1]))
    from formats import CODECS, pack

    for codec in CODECS:
        data = pack(golden_layers(), TASK_IDS, codec, META)
        golden_path(codec).write_bytes(data)
        print(f"{golden_path(codec).name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
