#!/usr/bin/env python3
"""Train a linear classifier on scikit-learn's bundled 8x8 digits data set.

A small but real training program for tuning examples. Hyperparameters come from
command-line flags; progress and results go to stdout as ``name=value`` pairs, the
format the default StdOut metrics collector reads:

    epoch=1 accuracy=0.9111 loss=0.0889
    epoch=2 accuracy=0.9333 loss=0.0667
    ...
    accuracy=0.9444
    loss=0.0556

``accuracy`` is the validation accuracy and ``loss`` the validation error rate
(1 - accuracy), so both are comparable across every ``--loss`` choice. Anything
else (the configuration, warnings) goes to stderr so it can never be mistaken for
a metric.

The data split, the weight initialisation and the per-epoch shuffling all use fixed
seeds: the same flags always give the same numbers.
"""

from __future__ import annotations

import argparse
import math
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
from reporting import make_reporter
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

SEED = 42
LOSSES = ("hinge", "log_loss", "modified_huber")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def positive_float(text: str) -> float:
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _number(text)  # accepts "4" and "4.0", rejects "4.5"
    if not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=positive_float, default=0.01,
                        help="constant learning rate (SGD eta0), > 0")
    parser.add_argument("--alpha", type=non_negative_float, default=1e-4,
                        help="L2 regularisation strength, >= 0")
    parser.add_argument("--epochs", type=positive_int, default=5,
                        help="passes over the training set, >= 1")
    parser.add_argument("--loss", choices=LOSSES, default="hinge",
                        help="loss function of the linear model")
    parser.add_argument("--report", default="stdout",
                        choices=["stdout", "file-text", "file-json", "tfevent", "prometheus", "push"],
                        help="how per-epoch metrics reach natib (one per Katib collector kind)")
    parser.add_argument("--metrics-path", help="metrics file (file-*) or event directory (tfevent)")
    parser.add_argument("--port", type=positive_int, default=8080, help="port of /metrics (prometheus)")
    parser.add_argument("--checkpoint-dir", help="resume from and save to model.pkl here (population based training)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"training SGDClassifier: lr {args.lr}, alpha {args.alpha}, "
          f"epochs {args.epochs}, loss function {args.loss}", file=sys.stderr)

    digits = load_digits()
    x_train, x_val, y_train, y_val = train_test_split(
        digits.data, digits.target, test_size=0.25, random_state=SEED, stratify=digits.target
    )
    scaler = StandardScaler().fit(x_train)
    x_train, x_val = scaler.transform(x_train), scaler.transform(x_val)
    classes = np.unique(digits.target)

    model = SGDClassifier(
        loss=args.loss, alpha=args.alpha, learning_rate="constant", eta0=args.lr, random_state=SEED
    )
    checkpoint = Path(args.checkpoint_dir) / "model.pkl" if args.checkpoint_dir else None
    if checkpoint is not None and checkpoint.exists():
        # Continue the parent's training with this trial's hyperparameters.
        model = pickle.loads(checkpoint.read_bytes())
        model.set_params(eta0=args.lr, alpha=args.alpha)
        print(f"resumed from {checkpoint}", file=sys.stderr)
    rng = np.random.default_rng(SEED)
    reporter = make_reporter(args.report, args.metrics_path, args.port)
    accuracy = 0.0
    with warnings.catch_warnings():
        # Large learning rates can overflow intermediate values; the accuracy still tells the story.
        warnings.simplefilter("ignore", category=RuntimeWarning)
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        for epoch in range(1, args.epochs + 1):
            order = rng.permutation(len(x_train))
            model.partial_fit(x_train[order], y_train[order], classes=classes)
            accuracy = float(model.score(x_val, y_val))
            reporter.report(epoch, {"accuracy": accuracy, "loss": 1.0 - accuracy})
    reporter.close()
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        partial = checkpoint.with_suffix(".tmp")
        partial.write_bytes(pickle.dumps(model))
        partial.replace(checkpoint)  # readers never see a half-written checkpoint
    if args.report == "stdout":
        print(f"accuracy={accuracy:.4f}")
        print(f"loss={1.0 - accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
