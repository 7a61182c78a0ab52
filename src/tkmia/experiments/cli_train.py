"""`tkmia train`: fine-tune a classifier on a dataset and keep the best checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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


def _default_out(dataset: str, arch: str) -> Path:
    return Path("runs") / f"{dataset}-{arch}"


def train_command(args: argparse.Namespace) -> int:
    import torch

    from tkmia.data.factory import DATASETS, EVAL_SPLIT, TRAIN_SPLIT, open_dataset
    from tkmia.experiments.cli_run import _check_writable
    from tkmia.files import remove_stale_temporaries
    from tkmia.models import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        architectures,
        build_model,
        load_state,
    )
    from tkmia.models.builtin import BUILTIN_ARCH
    from tkmia.models.resnet import load_imagenet_weights
    from tkmia.training import TrainConfig, train_model

    if args.dataset not in DATASETS:
        raise InputError(f"unknown dataset {args.dataset!r}; expected one of {list(DATASETS)}")
    arch, epochs, batch_size, lr, optimizer, hflip = TRAIN_DEFAULTS[args.dataset]
    arch = args.arch or arch
    if arch not in architectures():
        raise InputError(f"unknown architecture {arch!r}; expected one of {architectures()}")
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
                f"--weights {str(args.weights)!r} are ImageNet weights for the ResNets; the "
                f"built-in architecture {BUILTIN_ARCH!r} trains from scratch (drop --weights)"
            )
    device = args.device
    try:
        torch.device(device)
    except RuntimeError:
        raise InputError(f"--device must be cpu or cuda[:i], got {device!r}") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device!r} asked for, but no CUDA device is available")
    out = args.out or _default_out(args.dataset, arch)
    _check_writable(Path(out))

    if args.dataset == "digits":
        train_set = open_dataset("digits", "train", seed=args.seed)
        test_set = open_dataset("digits", "test", seed=args.seed)
    elif args.dataset == "folder":
        if args.test_csv is None:
            raise InputError(
                "dataset 'folder' needs --csv (training images) and --test-csv (test images)"
            )
        train_set = open_dataset("folder", "train", args.root, args.image_size, args.csv)
        test_set = open_dataset("folder", "test", args.root, args.image_size, args.test_csv)
    else:
        train_set = open_dataset(
            args.dataset, TRAIN_SPLIT[args.dataset], args.root, args.image_size
        )
        test_set = open_dataset(args.dataset, EVAL_SPLIT[args.dataset], args.root, args.image_size)
    classes = list(train_set.classes)
    if list(test_set.classes) != classes:
        raise InputError("the training and test files name different classes")
    builtin = arch == BUILTIN_ARCH and hasattr(train_set, "images")
    if builtin:
        images = train_set.images.float() / 255.0
        mean = images.mean(dim=(0, 2, 3)).tolist()
        std = images.std(dim=(0, 2, 3)).tolist()
        image_size = images.shape[-1]
    else:
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        image_size = int(train_set[0][0].shape[-1]) if len(train_set) else args.image_size
    meta = {
        "arch": arch,
        "classes": classes,
        "image_size": image_size,
        "mean": mean,
        "std": std,
        "dataset": args.dataset,
    }
    torch.manual_seed(args.seed)
    model = build_model(meta)  # in the architecture's memory layout (checkpoints: contiguous)
    if not builtin:
        if args.weights is not None:
            load_imagenet_weights(model.net, args.weights)
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
    best = train_model(
        model,
        train_set,
        test_set,
        config,
        out,
        meta,
        device=device,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    remove_stale_temporaries(Path(out))  # what an interrupted earlier run left
    print(
        f"best checkpoint: {Path(out) / 'best.safetensors'} (epoch {best['epoch']}, "
        f"test mAP {best['test_map']:.4f})"
    )
    return 0
