"""Train the InversionView three-digit-addition probed model on CPU and save it.

Usage::

    .venv/bin/python scripts/train_addition_model.py OUT_DIR [--steps 6500] [--time-budget 540]

Writes ``OUT_DIR/model.safetensors`` and ``OUT_DIR/config.json`` (see
``msae_plugin.inversionview.addition.save_probed_model``) and prints train/test accuracy.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from msae_plugin.inversionview import addition  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", help="folder to write model.safetensors + config.json into")
    p.add_argument("--steps", type=int, default=6500, help="schedule length (default 6500)")
    p.add_argument("--time-budget", type=float, default=540.0, help="stop training after N s")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loss-on", choices=["answer", "all"], default="answer")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--test-limit", type=int, default=0, help="evaluate on the first N test items")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    train, test = addition.train_test_split()
    if args.test_limit:
        test = test[: args.test_limit]
    history: list[tuple[int, float]] = []
    t0 = time.monotonic()
    model = addition.train_probed_model(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress=not args.no_progress,
        loss_on=args.loss_on,
        train_problems=train,
        time_budget_s=args.time_budget,
        history=history,
    )
    train_s = time.monotonic() - t0
    steps_done = history[-1][0] if history else 0
    t1 = time.monotonic()
    test_acc = addition.answer_accuracy(model, test)
    train_acc = addition.answer_accuracy(model, train[:20_000])
    eval_s = time.monotonic() - t1
    print(f"steps={steps_done} train_time={train_s:.0f}s eval_time={eval_s:.0f}s")
    print(f"final loss={history[-1][1]:.4f}" if history else "no loss logged")
    print(f"train accuracy (20k subsample) = {train_acc:.4f}")
    print(f"test accuracy ({len(test)} problems) = {test_acc:.4f}")
    out = addition.save_probed_model(
        model,
        args.out_dir,
        extra={
            "steps": steps_done,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "loss_on": args.loss_on,
            "train_seconds": round(train_s, 1),
            "test_accuracy": test_acc,
            "train_accuracy_20k": train_acc,
        },
    )
    print(f"saved to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
