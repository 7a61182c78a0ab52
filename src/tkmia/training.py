"""Fine-tuning a multi-label classifier with binary cross-entropy (paper, Table 5).

:func:`train_model` is the one training loop of the project, for the built-in CNN and the
ResNets alike. After every epoch it scores the test split and computes the test mAP
(mean over classes of average precision); it keeps

* ``<out>/best.safetensors`` (+ ``.json``): the epoch with the highest test mAP, as in
  the paper's protocol (the paper reports the test mAP of the model it attacks);
* ``<out>/last.safetensors`` (+ ``.json``) and ``<out>/train_state.pt``: the latest epoch
  and the optimiser state (plain tensors and numbers, loaded with ``weights_only=True``),
  so that rerunning the same command after an interruption resumes after the last
  finished epoch.

The learning rate follows a cosine schedule with a short linear warm-up, computed from
the global step so that resuming continues the same schedule. Shuffling is seeded per
epoch from ``seed``, so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sized
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from tkmia.errors import InputError
from tkmia.files import atomic_path
from tkmia.metrics import mean_average_precision
from tkmia.models.checkpoint import load_state, save_checkpoint

OPTIMIZERS = ("adam", "sgd")
WARMUP_FRACTION = 0.05


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train_model`.

    Attributes:
        epochs: passes over the training split.
        batch_size: images per step.
        lr: peak learning rate.
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9).
        weight_decay: L2 weight decay.
        hflip: flip half of each batch left-right (photographs; not for digits).
        noise: σ of the Gaussian noise added to every training image, clipped to [0, 1]
            (Cohen et al. 2019's data augmentation for randomized smoothing); 0: none.
        seed: seeds the initial shuffle order and the flips.
        num_workers: DataLoader worker processes (0 reads in the main process).
    """

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    weight_decay: float = 1e-4
    hflip: bool = False
    noise: float = 0.0
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(
                    f"--{name.replace('_', '-')} must be a positive integer, got {value!r}"
                )
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"--lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.weight_decay < 0:
            raise InputError(f"weight decay must be >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.noise, (int, float)) and 0 <= self.noise < math.inf):
            raise InputError(f"--noise must be a number >= 0, got {self.noise!r}")

    def saved(self) -> dict[str, Any]:
        """The config as saved with a run; ``noise`` only when set, so that the states of
        runs from before the option resume as they were."""
        config = asdict(self)
        if not self.noise:
            del config["noise"]
        return config


@torch.no_grad()
def evaluate_map(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    device: str = "cpu",
    num_workers: int = 0,
) -> float:
    """Test mAP of ``model`` (eval mode) on ``dataset``: mean over classes of AP."""
    model.eval()
    scores, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    for images, lab in loader:
        scores.append(model(images.to(device)).float().cpu())
        labels.append(lab.float())
    return float(mean_average_precision(torch.cat(scores), torch.cat(labels)))


def _lr_at(step: int, total: int, peak: float) -> float:
    warm = max(1, int(WARMUP_FRACTION * total))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True
    )


def _read_train_state(path: Path) -> dict[str, Any]:
    """The resumable training state saved at ``path`` (tensors and plain containers only).

    Raises:
        InputError: the file cannot be read as such a state (truncated, or not ours).
    """
    fix = "delete that folder or use another --out"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure means: not a state this function wrote
        raise InputError(
            f"cannot read the training state {str(path)!r} ({type(err).__name__}); {fix}"
        ) from None
    if not isinstance(state, dict):
        raise InputError(f"the training state {str(path)!r} is not a dict; {fix}")
    return state


def train_model(
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    config: TrainConfig,
    out: str | Path,
    meta: dict[str, Any],
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``model`` (a :class:`~tkmia.models.wrapper.Normalized`) with BCE; resumable.

    Args:
        model: takes ``(B, 3, S, S)`` images in [0, 1], returns ``(B, c)`` logits.
        train_set, test_set: datasets of ``(image, labels (c,))``.
        config: the hyper-parameters.
        out: folder for ``best``/``last`` checkpoints and the resumable state.
        meta: checkpoint metadata (``arch``, ``classes``, ``image_size``, ``mean``, ``std``,
            ...); ``test_map``, ``epoch`` and ``train`` are added.
        device: where to train.
        progress: show a progress bar per epoch.
        log: receives one line per epoch.

    Returns:
        The best checkpoint's metadata, with ``history`` (per-epoch loss and test mAP).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.to(device)
    optimizer = _make_optimizer(model, config)
    start_epoch, best_map, history = _resume(out, model, optimizer, config, meta, log)
    n_train = len(cast(Sized, train_set))
    # a last batch of one image breaks batch norm on 1x1 feature maps: skip it
    drop_last = n_train % config.batch_size == 1 and n_train > 1
    steps_per_epoch = (
        max(1, n_train // config.batch_size)
        if drop_last
        else math.ceil(n_train / config.batch_size)
    )
    for epoch in range(start_epoch, config.epochs):
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        loader = DataLoader(
            train_set,
            batch_size=config.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=config.num_workers,
            drop_last=drop_last,
        )
        started = time.perf_counter()
        loss = _train_epoch(
            model, optimizer, loader, (generator, _noise_generator(config, epoch)), config,
            device, progress,
            epoch=epoch, first_step=epoch * steps_per_epoch,
            total_steps=steps_per_epoch * config.epochs,
        )  # fmt: skip
        test_map = evaluate_map(model, test_set, device=device, num_workers=config.num_workers)
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch + 1, "loss": loss, "test_map": test_map, "seconds": seconds})
        improved = test_map > best_map
        best_map = max(best_map, test_map)
        _save_epoch(out, model, optimizer, config, meta, epoch, best_map, history, improved)
        log(
            f"epoch {epoch + 1}/{config.epochs}: loss {loss:.4f}, "
            f"test mAP {test_map:.4f}{' (best)' if improved else ''}, {seconds:.1f} s"
        )
    best = json.loads((out / "best.json").read_text())
    best["history"] = history
    return best


def _resume(
    out: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    meta: dict[str, Any],
    log: Callable[[str], None],
) -> tuple[int, float, list[dict[str, Any]]]:
    """``(first epoch, best test mAP, history)``: of the interrupted run in ``out`` (whose
    last weights and optimiser state are loaded), or of a new run."""
    state_path = out / "train_state.pt"
    if not (state_path.is_file() and (out / "last.safetensors").is_file()):
        return 0, -1.0, []
    state = _read_train_state(state_path)
    if state.get("config") != config.saved() or state.get("classes") != list(meta["classes"]):
        raise InputError(
            f"{str(out)!r} holds a training run with other settings; use another --out "
            "or delete that folder"
        )
    model.load_state_dict(load_state(out / "last.safetensors"))
    optimizer.load_state_dict(state["optimizer"])
    start_epoch, best_map = int(state["epoch"]) + 1, float(state["best_map"])
    log(f"resuming {out} after epoch {start_epoch} (best test mAP so far {best_map:.4f})")
    return start_epoch, best_map, json.loads(state["history"])


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    generators: tuple[torch.Generator, torch.Generator],
    config: TrainConfig,
    device: str,
    progress: bool,
    *,
    epoch: int,
    first_step: int,
    total_steps: int,
) -> float:
    """One epoch of BCE training (learning-rate schedule per step, optional horizontal
    flips and Gaussian noise drawn from ``generators``: (flips, noise)); returns the mean
    training loss."""
    generator, noise_generator = generators
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    running, seen = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
    for i, (images, labels) in enumerate(bar):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(first_step + i, total_steps, config.lr)
        images, labels = images.to(device), labels.to(device).float()
        if config.hflip:
            flip = torch.rand(images.shape[0], generator=generator) < 0.5
            images[flip.to(device)] = images[flip.to(device)].flip(-1)
        if config.noise:
            noise = torch.randn(images.shape, generator=noise_generator).to(device)
            images = (images + config.noise * noise).clamp_(0.0, 1.0)
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += float(loss.detach()) * images.shape[0]
        seen += images.shape[0]
        bar.set_postfix(loss=f"{running / seen:.4f}")
    return running / max(seen, 1)


def _noise_generator(config: TrainConfig, epoch: int) -> torch.Generator:
    """The training noise's own stream (the shuffle's is left as it was without noise)."""
    return torch.Generator().manual_seed(config.seed * 100_003 + epoch + 7_919)


def _save_epoch(
    out: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    meta: dict[str, Any],
    epoch: int,
    best_map: float,
    history: list[dict[str, Any]],
    improved: bool,
) -> None:
    """Write ``last`` (and ``best`` when ``improved``) checkpoints and the resumable state."""
    epoch_meta = {
        **meta, "test_map": history[-1]["test_map"], "epoch": epoch + 1, "train": config.saved()
    }  # fmt: skip
    if improved:
        save_checkpoint(out / "best.safetensors", model, epoch_meta)
    save_checkpoint(out / "last.safetensors", model, epoch_meta)
    with atomic_path(out / "train_state.pt") as tmp:
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "best_map": best_map,
                "history": json.dumps(history),
                "config": config.saved(),
                "classes": list(meta["classes"]),
            },
            tmp,
        )
