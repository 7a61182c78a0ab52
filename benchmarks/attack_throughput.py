"""Attack throughput against the model's own forward+backward ceiling (issue 7).

Run by hand (not in CI), e.g.::

    .venv/bin/python benchmarks/attack_throughput.py --threads 1      # built-in model, batch 64
    .venv/bin/python benchmarks/attack_throughput.py --threads 1 --model resnet50 \
        --images 8 --batch-size 8 --max-iter 5           # 224 px, random weights, no download
    .venv/bin/python benchmarks/attack_throughput.py --threads 1 --scaling

One run measures, on the same images and model:

(a) the ceiling: the model's bare forward + backward with respect to the input (forward on
    a batch of ``--batch-size`` images that require grad, in the model's own memory layout,
    backward of the summed scores), in image-iterations per second. It is sampled inside
    each timed attack run: before every ``--probe-every``-th attack iteration, one bare
    pass on a full batch, timed and kept out of the attack's time, so that the ceiling and
    the attack are measured under the same load (this shared machine's speed moves by
    +-30 % from minute to minute);
(b) every attack over ``--images`` images as ``tkmia run`` attacks a setting: chunks of
    ``--chunk-size`` images (default 4 x ``--batch-size``, the runner's) streamed through
    one working set of ``--batch-size`` (``Attack.stream``, continuous batching across
    chunks), counting only the image-iterations it needs: the sum over samples of the
    iterates evaluated, ``iterations + 1``. Each attack runs ``--rounds`` times after one
    warm-up run (oneDNN builds its kernels on a batch size's first use, ~4 ms each for the
    built-in model); the round of median efficiency is shown, "range" gives the lowest and
    highest. kFool takes k+1 backward passes per iteration; it is counted as one
    image-iteration per forward and compared with a ceiling of one forward and k+1
    backward passes (its efficiency against the plain ceiling is printed below the table);
(c) the same attack over the same images one image at a time.

The table gives img-iter/s of (b), efficiency (b)/(a), the speedup (b)/(c) and on how many
images the batched and one-by-one runs agree on success and on the iteration count. The
column "batch-by-batch" is (b) without continuous batching (chunks of ``--batch-size`` one
after the other, one call each), for comparison. The time of (b) includes everything the
attack does (validation, scoring the clean images, which is not an image-iteration). (b)
is split by the batch of each iteration (from the start of its forward pass to the next
one's): "full-batch effic." is the efficiency of the iterations that ran on a full working
set of ``--batch-size`` images (the engine's own cost per iteration), "tail" the share of
(b)'s time spent in smaller batches once the stream is dry (samples that need many
iterations finish alone, where the model's throughput is lower). "iterations" counts the
attack iterations of (b) (forward passes of the working set) and "at least" their lower
bound, the image-iterations divided by the batch size: what the order in which samples
start costs, in a number that does not move with the machine's speed (on a GPU, where a
small batch takes about as long as a full one, the time follows it).

``--scaling`` measures instead: the time of one iteration against the number of labels c
(a linear head with c outputs on the built-in model's features), split into the model's
forward and backward (the ceiling), the loss and success measure (the gradient of TkMIA's
loss w.r.t. the scores, and the top-k success count) and the rest of the engine; and
throughput against the batch size. Both the model's pass and an attack iteration are
sampled alternately within one TkMIA run whose learning rate is so small that no sample
ever succeeds (so every sample runs every iteration): a bare pass of the model before
every second iteration, and the interval between consecutive forward passes less that
probe; the medians are shown.

Like ``tkmia run``, the benchmark first makes glibc's malloc keep freed memory
(:func:`tkmia.runtime.retain_freed_memory`), which speeds up the ceiling and the attacks
alike; ``--system-malloc`` leaves glibc's defaults, for comparison.

Other processes loading the CPU make the numbers noisy; the load average is printed, and
``--threads 1`` avoids the collapse of oversubscribed threads on a loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import nn

from tkmia.attacks import Attack, TkMIA
from tkmia.attacks.layout import model_memory_format
from tkmia.experiments.methods import REGISTRY
from tkmia.losses import tkmia_grad
from tkmia.metrics import topk_indices
from tkmia.runtime import retain_freed_memory

METHODS = tuple(REGISTRY)


def make_attack(name: str, model: nn.Module, args: argparse.Namespace, **over) -> Attack:
    """The registry's attack ``name`` with the benchmark's hyper-parameters (those it takes)."""
    if name not in REGISTRY:
        raise SystemExit(f"unknown method {name!r}; choose from {METHODS}")
    spec = REGISTRY[name]
    opts = {"lr": args.lr, "lam": args.lam, "max_iter": args.max_iter} | over
    return spec.cls(model, args.k, **{h: v for h, v in opts.items() if h in spec.defaults})


# ----------------------------------------------------------------------- problems
def builtin_problem(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, ...]:
    from tkmia.data import Digits
    from tkmia.models import builtin_model
    from tkmia.protocol import select_random

    model = builtin_model(args.device)
    data = Digits(args.split)
    x = data.images.float().div(255)
    if args.image_size != x.shape[-1]:
        x = nn.functional.interpolate(x, size=args.image_size, mode="bilinear").clamp(0, 1)
    x = x.to(args.device)
    y = data.labels.to(args.device)
    with torch.no_grad():
        clean = torch.cat([model(x[i : i + 250]) for i in range(0, len(x), 250)])
    spec, ok = select_random(y, clean, args.n, args.k, args.seed, range(len(x)))
    idx = torch.nonzero(ok).flatten()[: args.images]
    if len(idx) < args.images:
        raise SystemExit(f"only {len(idx)} eligible images in the {args.split} split")
    return model, x[idx], y[idx], spec[idx].float()


def random_problem(model: nn.Module, b: int, size: int, args) -> tuple[torch.Tensor, ...]:
    """Random images; Y = clean top-(k+2), S = n labels of the clean top-k."""
    g = torch.Generator().manual_seed(args.seed)
    x = torch.rand(b, 3, size, size, generator=g).to(args.device)
    with torch.no_grad():
        clean = torch.cat([model(x[i : i + 16]) for i in range(0, b, 16)])
    order = clean.argsort(dim=1, descending=True).cpu()
    y = torch.zeros(clean.shape)
    y.scatter_(1, order[:, : args.k + 2], 1)
    s = torch.zeros(clean.shape)
    for i in range(b):
        s[i, order[i, torch.randperm(args.k, generator=g)[: args.n]]] = 1
    return x, y.to(args.device), s.to(args.device)


def resnet_model(arch: str, classes: int, device: str) -> nn.Module:
    from tkmia.models import IMAGENET_MEAN, IMAGENET_STD, Normalized, build_net

    torch.manual_seed(0)
    return Normalized(build_net(arch, classes), IMAGENET_MEAN, IMAGENET_STD).to(device).eval()


def head_model(c: int, device: str) -> nn.Module:
    """The built-in model's features with a fresh linear head of ``c`` outputs."""
    from tkmia.models import builtin_model

    model = builtin_model(device)
    torch.manual_seed(c)
    last = model.net[-1]
    model.net[-1] = nn.Linear(last.in_features, c).to(device)
    return model.eval()


# ------------------------------------------------------------------------ timing
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: str) -> tuple[float, object]:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def bare_pass(model: nn.Module, x: torch.Tensor, backwards: int = 1) -> None:
    """One forward and ``backwards`` backward passes of the model w.r.t. its input ``x``."""
    xx = x.detach().requires_grad_(True)
    out = model(xx).sum()
    for j in range(backwards):
        torch.autograd.grad(out, xx, retain_graph=j < backwards - 1)


def ceiling(model: nn.Module, x: torch.Tensor, reps: int, backwards: int = 1) -> float:
    """Seconds per :func:`bare_pass` on batch ``x``, given to the model in its own memory
    layout (as the attacks do)."""
    x = x.contiguous(memory_format=model_memory_format(model))

    def once() -> None:
        bare_pass(model, x, backwards)

    for _ in range(2):
        once()
    times = []
    for _ in range(reps):
        times.append(timed(once, str(x.device))[0])
    return sorted(times)[len(times) // 2]  # the median: robust to other processes' load


def streamed(atk: Attack, x, y, s, args: argparse.Namespace) -> SimpleNamespace:
    """The attack over all images as ``tkmia run`` does it: chunks of ``--chunk-size``
    streamed through one working set of ``--batch-size``; success and iterations of all."""
    cs = args.chunk_size
    chunks = [(x[i : i + cs], y[i : i + cs], s[i : i + cs]) for i in range(0, len(x), cs)]
    results = list(atk.stream(chunks, batch_size=args.batch_size, sync_every=args.sync_every))
    return SimpleNamespace(
        success=torch.cat([r.success for r in results]),
        iterations=torch.cat([r.iterations for r in results]),
    )


def one_by_one(atk: Attack, x, y, s, device: str) -> tuple[float, torch.Tensor, torch.Tensor]:
    ok, its = [], []

    def run() -> None:
        for i in range(x.shape[0]):
            r = atk(x[i : i + 1], y[i : i + 1], s[i : i + 1])
            ok.append(r.success)
            its.append(r.iterations)

    secs, _ = timed(run, device)
    its_t = torch.cat(its)
    return int((its_t + 1).sum()) / secs, torch.cat(ok), its_t


# ------------------------------------------------------------------------- modes
def throughput(args: argparse.Namespace) -> None:
    if args.model == "builtin":
        model, x, y, s = builtin_problem(args)
    else:
        model = resnet_model(args.model, args.classes, args.device)
        x, y, s = random_problem(model, args.images, args.image_size, args)
    bs, dev = args.batch_size, args.device
    batch = x.repeat(-(-bs // x.shape[0]), 1, 1, 1)[:bs]  # bs images, repeated if too few
    ceil_t = ceiling(model, batch, args.reps)
    ceil1 = 1 / ceiling(model, x[:1], args.reps)
    print(
        f"model {args.model}, images {tuple(x.shape)}, c = {y.shape[1]}, k = {args.k}, "
        f"|S| = {args.n}, batch {bs}, lr {args.lr}, lam {args.lam}, max_iter {args.max_iter}"
    )
    print(
        f"(a) ceiling, fwd+bwd w.r.t. the input: {bs / ceil_t:.1f} img-iter/s at batch {bs} "
        f"({1e3 * ceil_t:.1f} ms/iteration), {ceil1:.1f} img-iter/s at batch 1; sampled again "
        "inside every attack run (column 'ceiling')"
    )
    single = x.shape[0] if args.single_images is None else args.single_images
    head = (
        f"{'method':8s} {'img-iter':>8s} {'succ':>5s} {'mean it':>7s} {'ceiling':>8s} "
        f"{'img-iter/s':>10s} {'effic.':>6s} {'range':>9s} {'batch-by-batch':>14s} "
        f"{'1-by-1 /s':>9s} {'speedup':>7s} {'full-batch effic.':>17s} {'tail':>5s} "
        f"{'iterations':>10s} {'at least':>8s}  "
        "same flags, same iterations (batched vs 1-by-1)"
    )
    print(head)
    print("-" * len(head))
    notes = []
    stamped = Stamped(model)
    for name in args.methods:
        atk = make_attack(name, stamped, args)
        # warm-up: one full run, so that the timed run finds every batch size's kernels
        # ready (oneDNN builds them on a shape's first use, ~4 ms each for the builtin model)
        if args.model == "builtin":
            streamed(atk, x, y, s, args)
        atk(x[:1], y[:1], s[:1])  # (a ResNet's few images are one batch: no new shapes)
        passes = args.k + 1 if name == "kfool" else 1
        ceiling(model, batch, 2, backwards=passes)  # warm-up of the probe's shape
        rounds = []
        for _ in range(args.rounds):
            stamped.reset(batch, args.probe_every, passes)
            secs, res = timed(lambda atk=atk: streamed(atk, x, y, s, args), dev)
            work = int((res.iterations + 1).sum())
            rate = work / (secs - sum(stamped.probes))
            ceil = bs * len(stamped.probes) / sum(stamped.probes)
            full_rate, tail = stamped.split(time.perf_counter(), bs)
            n_iter = len(stamped.batches)  # attack iterations: passes of the working set
            rounds.append((rate / ceil, rate, ceil, full_rate / ceil, tail, work, res, n_iter))
        stamped.reset()
        rounds.sort(key=lambda r: r[0])
        effic, rate, ceil, full_effic, tail, work, res, iters = rounds[len(rounds) // 2]
        spread = f"{rounds[0][0]:.2f}-{rounds[-1][0]:.2f}"
        chunks = [(x[i : i + bs], y[i : i + bs], s[i : i + bs]) for i in range(0, len(x), bs)]
        chunk_secs, _ = timed(lambda atk=atk, chunks=chunks: [atk(*c) for c in chunks], dev)
        rate1, ok1, its1 = one_by_one(atk, x[:single], y[:single], s[:single], dev)
        same_ok = int((ok1.cpu() == res.success[:single].cpu()).sum())
        same_it = int((its1.cpu() == res.iterations[:single].cpu()).sum())
        if name == "kfool":
            ceil_fb = bs / ceiling(model, batch, args.reps)
            ceil_kf = bs / ceiling(model, batch, args.reps, backwards=passes)
            notes.append(
                f"kfool: its ceiling is one forward and {passes} backward passes; against the "
                f"plain fwd+bwd ceiling its efficiency is {effic * ceil_kf / ceil_fb:.2f} "
                f"(the two ceilings measured one after the other: {ceil_fb:.1f} and "
                f"{ceil_kf:.1f} img-iter/s)"
            )
        print(
            f"{name:8s} {work:8d} {float(res.success.float().mean()):5.2f} "
            f"{float(res.iterations.float().mean()):7.2f} {ceil:8.1f} {rate:10.1f} "
            f"{effic:6.2f} {spread:>9s} {work / chunk_secs:14.1f} {rate1:9.1f} "
            f"{rate / rate1:6.2f}x {full_effic:17.2f} {100 * tail:4.0f}% {iters:10d} "
            f"{-(-work // bs):8d}  {same_ok}/{single} {same_it}/{single}"
        )
    for note in notes:
        print(note)


class Stamped(nn.Module):
    """The model, recording the time at which every forward pass starts and its batch.

    With a probe set (:meth:`reset`), every ``every``-th attack iteration is preceded by
    one bare forward + backward pass of the model on the probe batch (the ceiling), timed
    and kept out of the iteration's own time: the ceiling is sampled throughout the
    attack's run, under the same load as the attack itself.

    On CUDA the host only queues the work, so a probe is timed between two synchronisations
    (the first one waits for the attack's queued iterations, whose time stays in the span of
    the iteration before the probe); with ``sync_each`` every pass starts with one, so that
    each span is the time of one whole iteration. Spans without it are host times: their
    sum over many iterations is right, each one alone is not (the full-batch / tail split is
    approximate on a GPU).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.reset()

    def reset(
        self,
        probe: torch.Tensor | None = None,
        every: int = 4,
        passes: int = 1,
        sync_each: bool = False,
    ) -> None:
        self.starts: list[float] = []
        self.batches: list[int] = []
        self.probes: list[float] = []
        self.probed: list[float] = []  # probe time spent just before each recorded pass
        self.probe, self.every, self.passes = probe, every, passes
        self.sync_each = sync_each
        if probe is not None:
            self.probe = probe.contiguous(memory_format=model_memory_format(self.model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # an attack iteration, not the scoring of clean images
            spent = 0.0
            device = str(x.device)
            if self.probe is not None and len(self.starts) % self.every == 0:
                sync(device)
                t = time.perf_counter()
                bare_pass(self.model, self.probe, self.passes)
                sync(device)
                spent = time.perf_counter() - t
                self.probes.append(spent)
            elif self.sync_each:
                sync(device)
            self.starts.append(time.perf_counter())
            self.batches.append(x.shape[0])
            self.probed.append(spent)
        return self.model(x)

    def split(self, end: float, full: int) -> tuple[float, float]:
        """Over the recorded passes (each lasting until the next one starts, the last until
        ``end``, probes excluded): img-iter/s of the passes on a full batch of ``full``
        images, and the share of the time spent in smaller batches (the tail of the queue)."""
        nexts = self.starts[1:] + [end]
        probed = self.probed[1:] + [0.0]
        spans = [b - a - p for a, b, p in zip(self.starts, nexts, probed, strict=True)]
        full_t = sum(t for t, n in zip(spans, self.batches, strict=True) if n == full)
        full_work = sum(n for n in self.batches if n == full)
        return (full_work / full_t if full_t else float("nan")), 1 - full_t / sum(spans)


def per_iteration(model: nn.Module, x, y, s, k: int, iters: int = 60) -> tuple[float, float]:
    """Seconds per bare forward + backward of the model on ``x`` (the ceiling) and per
    attack iteration, sampled alternately within one run of TkMIA whose learning rate is so
    small that no sample ever succeeds: a probe before every second iteration, kept out of
    the iteration's time. Medians of both."""
    stamped = Stamped(model)
    atk = TkMIA(stamped, k, lr=1e-12, lam=0.0, max_iter=iters)
    atk(x, y, s)  # warm-up
    stamped.reset(x, every=2, sync_each=True)
    atk(x, y, s)
    starts, probed = stamped.starts, stamped.probed
    spans = sorted(b - a - p for a, b, p in zip(starts, starts[1:], probed[1:], strict=False))
    probes = sorted(stamped.probes)
    return probes[len(probes) // 2], spans[len(spans) // 2]


def loss_and_measure(scores: torch.Tensor, y, s, k: int, reps: int) -> float:
    """Seconds for the success check and the gradient of TkMIA's loss w.r.t. the scores, as
    the attack computes them every iteration (the closed form, ``tkmia_grad``)."""
    spec = s.bool()
    lab = y.bool()
    max_left = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)

    def once() -> None:
        f = scores.detach()
        ok = spec.gather(1, topk_indices(f, k)).sum(dim=1) <= max_left
        tkmia_grad(f, lab, spec, k)
        return ok

    for _ in range(10):
        once()
    secs, _ = timed(lambda: [once() for _ in range(reps)], str(scores.device))
    return secs / reps


def scaling(args: argparse.Namespace) -> None:
    dev, bs, k = args.device, args.batch_size, args.k
    print(
        f"per-iteration cost vs number of labels c (built-in features + linear head, "
        f"batch {bs}, TkMIA, k = {k}); medians, model and attack sampled alternately in one run"
    )
    head = (
        f"{'c':>5s} {'model fwd+bwd ms':>16s} {'loss+measure ms':>15s} {'engine rest ms':>14s} "
        f"{'attack ms/it':>12s} {'efficiency':>10s} {'loss share':>10s} {'rest share':>10s}"
    )
    print(head)
    print("-" * len(head))
    for c in args.classes_list:
        model = head_model(c, dev)
        x, y, s = random_problem(model, bs, 48, args)
        with torch.no_grad():
            scores = model(x)
        model_t, it_t = per_iteration(model, x, y, s, k)
        lm_t = loss_and_measure(scores, y, s, k, 300)
        rest = it_t - model_t - lm_t
        print(
            f"{c:5d} {1e3 * model_t:16.2f} {1e3 * lm_t:15.3f} {1e3 * rest:14.2f} "
            f"{1e3 * it_t:12.2f} {model_t / it_t:10.2f} {lm_t / it_t:10.3f} {rest / it_t:10.3f}"
        )
    print()
    print("throughput vs batch size (built-in model, TkMIA, every sample runs every iteration)")
    head = f"{'batch':>5s} {'ceiling img-iter/s':>18s} {'attack img-iter/s':>17s} {'effic.':>6s}"
    print(head)
    print("-" * len(head))
    from tkmia.models import builtin_model

    model = builtin_model(dev)
    for b in args.batch_list:
        x, y, s = random_problem(model, b, 48, args)
        model_t, it_t = per_iteration(model, x, y, s, k)
        print(f"{b:5d} {b / model_t:18.1f} {b / it_t:17.1f} {model_t / it_t:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin", choices=["builtin", "resnet50", "resnet101"])
    parser.add_argument(
        "--image-size", type=int, default=None, help="default: 48 (builtin), 224 (resnets)"
    )
    parser.add_argument("--classes", type=int, default=20, help="labels of a ResNet's head")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--images",
        type=int,
        default=None,
        help="images to attack (default: 640 builtin, of the 661 eligible, 8 resnets)",
    )
    parser.add_argument(
        "--split",
        default="val",
        choices=["train", "val", "test"],
        help="built-in dataset split of the images (eligible at k = 3, |S| = 1: val 661, "
        "test 1279)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="images per chunk of the stream, as tkmia run's (default: 4 x --batch-size)",
    )
    parser.add_argument(
        "--single-images",
        type=int,
        default=None,
        help="images for the one-by-one run (default: all)",
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--n", type=int, default=1, help="specified labels per image")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lam", type=float, default=1e-3)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--sync-every", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--reps", type=int, default=None, help="ceiling repetitions")
    parser.add_argument(
        "--rounds", type=int, default=3, help="timed runs of each attack (the median is shown)"
    )
    parser.add_argument(
        "--probe-every", type=int, default=4, help="attack iterations per ceiling probe"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scaling", action="store_true")
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave glibc's malloc settings as they are (tkmia run/train change them, see "
        "tkmia.runtime); both the ceiling and the attacks are slower then",
    )
    parser.add_argument("--classes-list", default="20,100,300,1000")
    parser.add_argument("--batch-list", default="1,4,16,64,128")
    args = parser.parse_args()
    resnet = args.model != "builtin"
    args.image_size = args.image_size or (224 if resnet else 48)
    args.images = args.images or (8 if resnet else 640)
    args.chunk_size = args.chunk_size or 4 * args.batch_size
    args.reps = args.reps or (3 if resnet else 20)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.classes_list = [int(c) for c in args.classes_list.split(",")]
    args.batch_list = [int(c) for c in args.batch_list.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    retained = False if args.system_malloc else retain_freed_memory()
    print(
        f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
        f"malloc keeps freed memory (as tkmia run): {retained}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    t = time.perf_counter()
    scaling(args) if args.scaling else throughput(args)
    print(f"done in {time.perf_counter() - t:.0f} s, load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
