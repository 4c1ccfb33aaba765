"""Storage report: bits per weight per task of every baseline, the chosen codec and the bounds."""

from __future__ import annotations

import numpy as np

from formats.codecs import AUTO, GROUP, PACK_CODECS, encode_layer, stream_groups
from formats.container import LayerMasks, auto_codec, normalized_masks
from formats.errors import FormatError
from formats.stats import conditional_entropy_bits, entropy_bits

BASELINES = ("float32", "bool", "packbits", "ascii7", "ascii7_huffman", "paper_huffman")
DIGITS = 4


def _coded_bits(codec: str, masks: list[np.ndarray]) -> list[float]:
    """Bits per task of one layer under `codec`; a stream covering several tasks is split evenly."""
    out: list[float] = []
    for stream, group in zip(encode_layer(codec, masks), stream_groups(codec, len(masks))):
        out += [8 * len(stream) / len(group)] * len(group)
    return out


def _cell_bits(masks: list[np.ndarray], codec: str) -> list[dict[str, float]]:
    """Per task of one layer: size in bits under every scheme, and the two entropy bounds."""
    n = masks[0].size if masks else 0
    coded = {
        "ascii7_huffman": _coded_bits("ascii7-huffman", masks),
        "paper_huffman": _coded_bits("paper-huffman", masks),
    }
    chosen = coded.get(codec.replace("-", "_")) or _coded_bits(codec, masks)
    conditional = conditional_entropy_bits(masks)
    cells = []
    for t, mask in enumerate(masks):
        ones = int(np.count_nonzero(mask))
        cells.append(
            {
                "ones": ones,
                "codec": chosen[t],
                "float32": 32.0 * n,
                "bool": 8.0 * n,
                "packbits": 8.0 * (-(-n // 8)),
                "ascii7": 8.0 * (-(-n // GROUP)),
                "ascii7_huffman": coded["ascii7_huffman"][t],
                "paper_huffman": coded["paper_huffman"][t],
                "independent": entropy_bits(ones, n),
                "conditional": conditional[t],
            }
        )
    return cells


def _summary(cells: list[dict[str, float]], weights: int, tasks: int) -> dict:
    """Sum cells and express them in bits per weight per task."""
    total = {key: sum(c[key] for c in cells) for key in cells[0]} if cells else {}
    scale = weights * tasks

    def bpw(key: str) -> float:
        return round(total[key] / scale, DIGITS) if scale and total else 0.0

    return {
        "weights": weights,
        "ones": int(total.get("ones", 0)),
        "density": round(total["ones"] / scale, DIGITS) if scale and total else 0.0,
        "bytes": round(total.get("codec", 0) / 8, 1),
        "bits_per_weight_per_task": bpw("codec"),
        "baselines": {key: bpw(key) for key in BASELINES},
        "bounds": {"independent": bpw("independent"), "conditional": bpw("conditional")},
    }


def storage_report(
    layers: list[LayerMasks], task_ids: list[int], codec: str, packed_size: int | None = None, meta: dict | None = None
) -> dict:
    """Sizes per task, per layer and in total (bits per weight per task) for `wsn` reports.

    `bytes` and the total `bits_per_weight_per_task` count the whole .wsnm file when packed_size is
    given, else only the codec's streams. paper_huffman's group of up to 7 tasks is split evenly
    over the tasks it holds. For codec `auto`, "codec" is the one pack() picks (given the same
    `meta`, which matters only near the header size limit); "requested_codec" is what was asked.
    """
    if codec not in PACK_CODECS:
        raise FormatError(f"unknown codec {codec!r} (known: {', '.join(PACK_CODECS)})")
    requested = codec
    if codec == AUTO:
        codec = auto_codec(layers, list(task_ids), meta)
    masks = normalized_masks(layers, list(task_ids))
    grid = [_cell_bits(layer_masks, codec) for layer_masks in masks]  # [layer][task]
    sizes = [int(np.prod(layer.shape)) for layer in layers]
    weights, tasks = sum(sizes), len(task_ids)
    per_task = [{"task": t, **_summary([row[i] for row in grid], weights, 1)} for i, t in enumerate(task_ids)]
    per_layer = [
        {"layer": layer.name, "shape": list(layer.shape), **_summary(row, size, tasks)}
        for layer, row, size in zip(layers, grid, sizes)
    ]
    total = _summary([cell for row in grid for cell in row], weights, tasks)
    payload_bytes = sum(c["codec"] for row in grid for c in row) / 8
    size = packed_size if packed_size is not None else int(round(payload_bytes))
    packbits_bytes = sum(-(-n // 8) for n in sizes) * tasks
    return {
        "codec": codec,
        "requested_codec": requested,
        "tasks": tasks,
        "weights": weights,
        "bytes": size,
        "payload_bytes": int(round(payload_bytes)),
        "bits_per_weight_per_task": round(8 * size / (weights * tasks), DIGITS) if weights and tasks else 0.0,
        "baselines": total["baselines"],
        "bounds": total["bounds"],
        "saving_vs_packbits": round(1 - size / packbits_bytes, DIGITS) if packbits_bytes else 0.0,
        "per_task": per_task,
        "per_layer": per_layer,
    }
