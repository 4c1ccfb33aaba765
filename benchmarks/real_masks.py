"""Learn a real multi-task sequence and write its masks as .wsnm, for the codec benchmark.

    python benchmarks/real_masks.py --hidden 1000-1000 --capacity 0.03 0.1 0.5 --out /tmp/wsn-masks
    python benchmarks/bench_codecs.py --weights 100000 --wsnm /tmp/wsn-masks/pmnist-c0.1.wsnm

PMNIST tasks 1..T with the engine behind `wsn train-task` (default: MLP 784-1000-1000 as in
REFERENCE.md section 4, 1 epoch at batch 64 to keep it short; masks, not accuracy, are the point).
Prints each sequence's storage report (every baseline and both bounds) as a table and JSON lines.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import emit, machine, run_sequence


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", default="1000-1000")
    p.add_argument("--capacity", type=float, nargs="+", default=[0.03, 0.1, 0.5])
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("/tmp/wsn-masks"))
    p.add_argument("--data-root", type=Path, default=None)
    args = p.parse_args()
    if args.data_root is None:
        from fetch_data import ensure_mnist

        args.data_root = ensure_mnist().parent
    from wsncli.engine.nn.models import parse_hidden
    from wsncli.engine.store.reader import read_checkpoint_file
    from wsncli.engine.usecases.pack import pack_checkpoint_masks

    args.out.mkdir(parents=True, exist_ok=True)
    print(f"# {machine()}")
    print(
        f"{'c':>5} {'context':>8} {'paper-huff':>10} {'ascii7-huff':>11} {'H alone':>8} {'H|ctx':>8} "
        f"{'ctx/bound':>9} {'acc':>6}"
    )
    for c in args.capacity:
        r = run_sequence(
            args.out / f"pmnist-c{c}.pt",
            list(range(1, args.tasks + 1)),
            benchmark="pmnist",
            hidden=parse_hidden(args.hidden),
            capacity=c,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=0,
            device="cpu",
            data_root=args.data_root,
            n_tasks=args.tasks,
        )
        packed = pack_checkpoint_masks(read_checkpoint_file(args.out / f"pmnist-c{c}.pt"), "context", f"pmnist-c{c}.pt")
        (args.out / f"pmnist-c{c}.wsnm").write_bytes(packed.data)
        rep = packed.report
        payload_bits = 8 * rep["payload_bytes"] / (rep["weights"] * rep["tasks"])
        ratio = payload_bits / rep["bounds"]["conditional"]
        print(
            f"{c:>5} {rep['bits_per_weight_per_task']:>8.4f} {rep['baselines']['paper_huffman']:>10.4f} "
            f"{rep['baselines']['ascii7_huffman']:>11.4f} "
            f"{rep['bounds']['independent']:>8.4f} {rep['bounds']['conditional']:>8.4f} {ratio:>9.4f} "
            f"{100 * r['acc']:>6.2f}"
        )
        emit(
            {
                "kind": "real_masks",
                "hidden": args.hidden,
                "capacity": c,
                "tasks": args.tasks,
                "epochs": args.epochs,
                "acc": r["acc"],
                "forget_free": r["forget_free"],
                "context_file": rep["bits_per_weight_per_task"],
                "context_payload": payload_bits,
                "payload_over_conditional_bound": ratio,
                "baselines": rep["baselines"],
                "bounds": rep["bounds"],
                "bytes": rep["bytes"],
            }
        )


if __name__ == "__main__":
    main()
