"""Knowledge distillation: train a small student to match a larger teacher, a tunable trial program.

    python -m natib.trials.distill --width 32 --depth 1 --temperature 4 --alpha 0.7

The teacher (``--teacher-arch``, ``--teacher-width``, ``--teacher-depth`` trained ``--teacher-epochs``
epochs) is trained once per data set, seed and teacher settings and kept in the cache directory (``--cache-dir``,
else ``NATIB_CACHE_DIR``, ``$NATIB_HOME/cache`` or ``~/.cache/natib``); trials that start together train it
once and the others wait and reuse it. The student (``--arch``, ``--width``, ``--depth``) is trained with
Hinton's loss

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * cross_entropy(student, labels)

where T is ``--temperature``. Printed metrics (``name=value``, stdout): ``accuracy`` (student, validation),
``size_bytes`` and ``params`` of the student, ``teacher_accuracy``, ``teacher_size_bytes``, ``teacher_params``,
``size_ratio`` (student / teacher bytes) and ``accuracy_drop`` (teacher - student).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
from torch.nn import functional

from natib.trials import models
from natib.trials.common import (
    TrialError,
    add_common_arguments,
    cache_dir,
    count_parameters,
    device,
    evaluate,
    model_size_bytes,
    note,
    positive_float,
    positive_int,
    report,
    run_main,
    seed_everything,
    set_threads,
    train,
)
from natib.trials.data import load_dataset


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
            temperature: float, alpha: float) -> torch.Tensor:
    """Hinton's distillation loss: softened KL to the teacher (scaled by T^2) mixed with the hard-label loss."""
    t = temperature
    soft = functional.kl_div(functional.log_softmax(student_logits / t, dim=1),
                             functional.log_softmax(teacher_logits / t, dim=1),
                             reduction="batchmean", log_target=True) * (t * t)
    hard = functional.cross_entropy(student_logits, labels)
    return alpha * soft + (1 - alpha) * hard


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m natib.trials.distill", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("mlp", "cnn"), default="mlp", help="student network (mlp)")
    p.add_argument("--width", type=positive_int, default=32, help="student units (mlp) or channels (cnn) (32)")
    p.add_argument("--depth", type=positive_int, default=1, help="student hidden layers or conv blocks (1)")
    p.add_argument("--epochs", type=positive_int, default=30, help="student training epochs (30)")
    p.add_argument("--lr", type=positive_float, default=5e-3, help="student learning rate (0.005)")
    p.add_argument("--temperature", type=positive_float, default=4.0, help="softmax temperature T (4)")
    p.add_argument("--alpha", type=float, default=0.7, help="weight of the teacher's soft targets, in [0, 1] (0.7)")
    p.add_argument("--teacher-arch", choices=("cnn", "mlp"), default="cnn", help="teacher network (cnn)")
    p.add_argument("--teacher-width", type=positive_int, default=32, help="teacher channels or units (32)")
    p.add_argument("--teacher-depth", type=positive_int, default=2, help="teacher conv blocks or layers (2)")
    p.add_argument("--teacher-epochs", type=positive_int, default=20, help="teacher training epochs (20)")
    p.add_argument("--teacher-lr", type=positive_float, default=5e-3, help="teacher learning rate (0.005)")
    add_common_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if not (math.isfinite(args.alpha) and 0.0 <= args.alpha <= 1.0):
        raise TrialError(f"--alpha: must be between 0 and 1, got {args.alpha}")
    started = time.perf_counter()
    set_threads(args.threads)
    dev = device(args.device)
    data = load_dataset(args.data, seed=args.seed, val_fraction=args.val_fraction)
    teacher_spec = {"arch": args.teacher_arch, "width": args.teacher_width, "depth": args.teacher_depth}
    student_spec = {"arch": args.arch, "width": args.width, "depth": args.depth}
    student = models.build(student_spec, data.shape, data.num_classes)  # checks the student flags early
    teacher, teacher_acc, path, reused = models.trained(
        "teacher", teacher_spec, data, epochs=args.teacher_epochs, lr=args.teacher_lr, batch_size=args.batch_size,
        seed=args.seed, dev=dev, cache=None if args.no_cache else cache_dir(args.cache_dir))
    note(f"teacher {teacher_spec}: accuracy {teacher_acc:.4f} ({'cached ' + str(path) if reused else 'trained'})")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss(logits: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        return kd_loss(logits, teacher_logits, labels, temperature=args.temperature, alpha=args.alpha)

    seed_everything(args.seed + 1)
    student = models.build(student_spec, data.shape, data.num_classes).to(dev)
    last = train(student, data.train_x, data.train_y, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                 dev=dev, seed=args.seed + 1, loss_fn=loss)
    if not math.isfinite(last):
        raise TrialError(f"--lr: training diverged (loss {last}); try a smaller learning rate")
    acc = evaluate(student, data.val_x, data.val_y, dev=dev)
    size, teacher_size = model_size_bytes(student), model_size_bytes(teacher)
    report(accuracy=acc, size_bytes=size, params=count_parameters(student), teacher_accuracy=teacher_acc,
           teacher_size_bytes=teacher_size, teacher_params=count_parameters(teacher),
           size_ratio=size / teacher_size, accuracy_drop=teacher_acc - acc, seconds=time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(run_main(main))
