"""`tkmia train`: fine-tune a classifier on a dataset and keep the best checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tkmia.cli.checks import check_device, check_writable, resolve_device
from tkmia.errors import InputError, MissingFileError

#: per-dataset defaults: (architecture, epochs, batch size, lr, optimizer, flip augmentation);
#: VOC, COCO and NUS-WIDE follow the paper's Table 5 (weight decay 1e-4 everywhere).
TRAIN_DEFAULTS = {
    "digits": ("digits_cnn", 24, 128, 5e-3, "adam", False),
    "voc2012": ("resnet50", 20, 32, 1e-4, "sgd", True),
    "coco2014": ("resnet101", 20, 128, 1e-4, "adam", True),
    "nuswide": ("resnet101", 20, 64, 1e-4, "adam", True),
    "folder": ("resnet50", 20, 32, 1e-4, "adam", True),
}


def _per_dataset(index: int) -> str:
    """A default of :data:`TRAIN_DEFAULTS` in words, for the help."""
    values = ", ".join(f"{name} {row[index]}" for name, row in TRAIN_DEFAULTS.items())
    return f"(default per dataset: {values})"


def add_parser(sub: Any) -> None:
    """Add the `train` subcommand.

    Args:
        sub: the ``add_subparsers()`` object of the `tkmia` parser.
    """
    train = sub.add_parser("train", help="fine-tune a multi-label classifier")
    train.add_argument(
        "--dataset", required=True, choices=list(TRAIN_DEFAULTS), help="the dataset to train on"
    )
    train.add_argument(
        "--root",
        type=Path,
        help="the dataset's folder (see docs/datasets.md; default: none, needed by all but digits)",
    )
    train.add_argument("--csv", type=Path, help="label file of a 'folder' dataset (default: none)")
    train.add_argument(
        "--test-csv", type=Path, help="label file of a 'folder' test split (default: none)"
    )
    train.add_argument(
        "--arch",
        default=None,
        help="architecture, or timm:<name> for any timm model (pip install 'tkmia[timm]') "
        + _per_dataset(0),
    )
    train.add_argument(
        "--weights",
        type=Path,
        help="local pretrained weights (.safetensors or weights-only .pth); the classifier "
        "head is skipped; nothing is downloaded (default: none, random init)",
    )
    train.add_argument("--epochs", type=int, help=_per_dataset(1))
    train.add_argument("--batch-size", type=int, help=_per_dataset(2))
    train.add_argument("--lr", type=float, help=_per_dataset(3))
    train.add_argument("--optimizer", choices=["adam", "sgd"], help=_per_dataset(4))
    train.add_argument(
        "--image-size", type=int, help="image side in pixels (default: the dataset's)"
    )
    train.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="Gaussian noise σ added to every training image (pixels in [0, 1], clipped), "
        "so that the model is useful under randomized smoothing (tkmia certify) (default: 0)",
    )
    train.add_argument(
        "--device",
        default="auto",
        help="auto (cuda when a GPU is there, else cpu), cpu or cuda[:i] (default: auto)",
    )
    train.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default: 0)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument(
        "--out",
        type=Path,
        required=False,
        help="checkpoint folder (default: runs/<dataset>-<arch>)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bars")


def _check(args: argparse.Namespace) -> tuple[str, Any, Path]:
    """Everything that needs no data: (architecture, TrainConfig, out)."""
    from tkmia.data.factory import DATASETS
    from tkmia.models import load_state
    from tkmia.models.architectures import check_architecture
    from tkmia.models.builtin import BUILTIN_ARCH
    from tkmia.training import TrainConfig

    if args.dataset not in DATASETS:
        raise InputError(f"unknown dataset {args.dataset!r}; expected one of {list(DATASETS)}")
    arch, epochs, batch_size, lr, optimizer, hflip = TRAIN_DEFAULTS[args.dataset]
    arch = args.arch or arch
    check_architecture(arch)
    if args.seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {args.seed!r}")
    if args.num_workers < 0:
        raise InputError(f"--num-workers must be a non-negative integer, got {args.num_workers!r}")
    config = TrainConfig(
        epochs=args.epochs if args.epochs is not None else epochs,
        batch_size=args.batch_size if args.batch_size is not None else batch_size,
        lr=args.lr if args.lr is not None else lr,
        optimizer=args.optimizer or optimizer,
        hflip=hflip,
        noise=args.noise,
        seed=args.seed,
        num_workers=args.num_workers,
    )
    if args.image_size is not None and args.image_size < 1:
        raise InputError(f"--image-size must be a positive integer, got {args.image_size!r}")
    if args.weights is not None and not args.weights.is_file():
        raise MissingFileError(
            f"weights file {str(args.weights)!r} not found; pass a local torchvision ImageNet "
            "state dict (.pth) or .safetensors file (nothing is downloaded)"
        )
    if args.weights is not None:
        load_state(args.weights)  # refuses pickles; read again (into the network) later
        if arch == BUILTIN_ARCH:
            raise InputError(
                f"--weights {str(args.weights)!r} are pretrained weights for the ResNets and "
                f"timm models; the built-in architecture {BUILTIN_ARCH!r} trains from scratch "
                "(drop --weights)"
            )
    check_device(args.device)
    out = Path(args.out or Path("runs") / f"{args.dataset}-{arch.replace(':', '-')}")
    check_writable(out)
    return arch, config, out


def _open_sets(args: argparse.Namespace) -> tuple[Any, Any]:
    """The training and test sets."""
    from tkmia.data.factory import EVAL_SPLIT, TRAIN_SPLIT, open_dataset

    name, root, size = args.dataset, args.root, args.image_size
    if name == "digits":
        return open_dataset(name, "train", seed=args.seed), open_dataset(
            name, "test", seed=args.seed
        )
    if name == "folder":
        if args.test_csv is None:
            raise InputError(
                "dataset 'folder' needs --csv (training images) and --test-csv (test images)"
            )
        train_set = open_dataset(name, "train", root, size, args.csv)
        return train_set, open_dataset(name, "test", root, size, args.test_csv)
    train_set = open_dataset(name, TRAIN_SPLIT[name], root, size)
    return train_set, open_dataset(name, EVAL_SPLIT[name], root, size)


def _meta(args: argparse.Namespace, arch: str, train_set: Any) -> tuple[dict[str, Any], bool]:
    """The checkpoint's metadata, and whether the built-in model trains on the built-in set
    (then the normalisation is the training images' own)."""
    from tkmia.models import IMAGENET_MEAN, IMAGENET_STD
    from tkmia.models.builtin import BUILTIN_ARCH
    from tkmia.models.timm_nets import input_stats, is_timm

    builtin = arch == BUILTIN_ARCH and hasattr(train_set, "images")
    if builtin:
        images = train_set.images.float() / 255.0
        mean = images.mean(dim=(0, 2, 3)).tolist()
        std = images.std(dim=(0, 2, 3)).tolist()
        image_size = images.shape[-1]
    else:  # what the pretrained weights expect: timm's pretrained_cfg says, else ImageNet's
        stats = input_stats(arch) if is_timm(arch) else None
        mean, std = stats or (list(IMAGENET_MEAN), list(IMAGENET_STD))
        image_size = int(train_set[0][0].shape[-1]) if len(train_set) else args.image_size
    meta = {
        "arch": arch,
        "classes": list(train_set.classes),
        "image_size": image_size,
        "mean": mean,
        "std": std,
        "dataset": args.dataset,
    }
    return meta, builtin


def command(args: argparse.Namespace) -> int:
    """Run `tkmia train`: train, keep the best checkpoint in ``--out``.

    Args:
        args: the parsed command line.

    Returns:
        The exit code, 0.

    Raises:
        InputError, MissingFileError: a user mistake (before any training starts).
    """
    import torch

    from tkmia.files import remove_stale_temporaries
    from tkmia.models import build_model
    from tkmia.models.resnet import load_imagenet_weights
    from tkmia.models.timm_nets import head_names
    from tkmia.training import train_model

    arch, config, out = _check(args)
    train_set, test_set = _open_sets(args)
    classes = list(train_set.classes)
    if list(test_set.classes) != classes:
        raise InputError("the training and test files name different classes")
    meta, builtin = _meta(args, arch, train_set)
    torch.manual_seed(args.seed)
    model = build_model(meta)  # in the architecture's memory layout (checkpoints: contiguous)
    if not builtin:
        if args.weights is not None:
            load_imagenet_weights(model.net, args.weights, head=head_names(model.net))
        else:
            print(
                "tkmia train: no --weights given, training from random initialisation "
                "(the paper fine-tunes ImageNet weights)",
                file=sys.stderr,
            )
    print(
        f"tkmia train: {args.dataset}, {len(train_set)} training and {len(test_set)} test "
        f"images, {len(classes)} classes, {arch}, {config.epochs} epochs -> {out}",
        flush=True,
    )
    progress = not args.no_progress and sys.stderr.isatty()
    best = train_model(
        model,
        train_set,
        test_set,
        config,
        out,
        meta,
        device=resolve_device(args.device),
        progress=progress,
    )
    remove_stale_temporaries(out)  # what an interrupted earlier run left
    print(
        f"best checkpoint: {out / 'best.safetensors'} (epoch {best['epoch']}, "
        f"test mAP {best['test_map']:.4f})"
    )
    return 0
