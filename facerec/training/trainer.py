"""Triplet fine-tuning of a backbone: the training loop, its checkpoints and its quick check.

A step takes a batch from the sampler; a dataset miner (`dict`) adds companions drawn from the whole
dataset; the faces are loaded (augmented), embedded, gathered across processes, mined and scored by the
loss. Layers up to `freeze` keep their weights and run in eval mode. Batch-norm layers always use their
running statistics: batches are small (8 faces in the seed), and per-batch statistics would also differ
between the processes of a distributed run. On CUDA the forward pass runs in mixed precision.

A step whose loss or gradients are not finite is not applied: the run stops there with one line (epoch,
step, what to try), and its folder keeps the files of the last finished epoch. An update can still
overflow the weights from finite gradients (a huge --lr); a later step's loss then says so, but after
an epoch's last step nothing would, so the weights are checked before each epoch's files are written.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from facerec import defaults
from facerec.contract.parts import Backbone, DatasetMiner, Loss, Miner, Triplets
from facerec.contract.registry import registry
from facerec.errors import FacerecError, UsageError
from facerec.integrity import first_not_finite
from facerec.pipeline.engine import build_pipeline, load_backbone, resolve_device
from facerec.training.augment import FaceAugment
from facerec.training.dataset import FaceDataset
from facerec.training.distributed import Processes, padded, start, stop
from facerec.training.facecache import FaceCache
from facerec.training.runfiles import RunFolder
from facerec.training.sampler import AnchorSampler, IdentitySampler, label_index, single_image_identities
from facerec.training.seeds import derived_seed, seed_torch

OPTIMIZERS = ("adagrad", "sgd", "adam")
NOTHING_FROZEN = "none"
CHECKPOINT_FORMAT = 1
ADAGRAD_START = 0.1  # TensorFlow's initial_accumulator_value, which FaceNet trained with
Report = Callable[[str], None]


@dataclass
class TrainSettings:
    """What a run is made of. Recorded in its checkpoint: `--resume` continues with these."""

    data: str
    backbone: str = defaults.BACKBONE
    pretrained: str | None = None  # the backbone's default weights
    weights: str | None = None
    miner: str = "dict"
    miner_options: dict[str, Any] = field(default_factory=dict)
    loss: str = "triplet"
    loss_options: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "adagrad"
    lr: float = 0.05
    batch_size: int = 8
    per_identity: int = 4
    epochs: int = 100
    freeze: str = NOTHING_FROZEN
    augment: bool = True
    seed: int = 0
    detector: str = defaults.DETECTOR
    detector_options: dict[str, Any] = field(default_factory=dict)
    aligner: str | None = None  # the backbone's recipe's
    aligner_options: dict[str, Any] = field(default_factory=dict)


class Diverged(FacerecError):
    """A step's loss or gradients are not finite; the step was not applied. `step` counts from 1."""

    def __init__(self, epoch: int, step: int, cause: str):
        super().__init__(f"epoch {epoch}, step {step}: {cause}")
        self.epoch, self.step, self.cause = epoch, step, cause


@dataclass
class StepResult:
    loss: float
    stats: dict[str, float]
    faces: int  # embedded in this step, all processes together
    seconds: dict[str, float]  # "load", "mine" and "step" (the whole step)


def freeze_through(module: nn.Module, layer: str) -> list[nn.Module]:
    """Stop training the top-level layers of `module` up to and including `layer` (in the order the
    network runs them, its state dict's order); returns them. `none` freezes nothing.
    """
    if layer == NOTHING_FROZEN:
        return []
    names = [name for name, _ in module.named_children()]
    if layer not in names:
        raise UsageError(f"--freeze: no layer '{layer}' (layers: {', '.join(names)}, or {NOTHING_FROZEN})")
    frozen = [child for _, child in list(module.named_children())[: names.index(layer) + 1]]
    for child in frozen:
        child.requires_grad_(False)
    if not any(p.requires_grad for p in module.parameters()):
        raise UsageError(f"--freeze {layer}: that leaves nothing to train")
    return frozen


def make_optimizer(name: str, parameters: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """FaceNet trained with AdaGrad at 0.05, the seed's rate; SGD has momentum 0.9.

    AdaGrad's accumulator starts at 0.1, as in TensorFlow, not at PyTorch's 0: from 0, the first step
    divides each gradient by its own size and moves every weight by the whole rate, 0.05, whatever its
    gradient; that is far more than Inception-ResNet's weights (about 0.03) can take, and the next
    forward pass overflowed to NaN. From 0.1, the first step is at most rate x gradient / 0.32.
    """
    if name == "adagrad":
        return torch.optim.Adagrad(parameters, lr=lr, initial_accumulator_value=ADAGRAD_START)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    raise UsageError(f"--optimizer: unknown '{name}' (available: {', '.join(OPTIMIZERS)})")


def mixed_precision(device: torch.device) -> tuple[Any, torch.amp.GradScaler]:
    """Autocast on CUDA (bfloat16 where supported, else float16 with loss scaling); nothing on the CPU."""
    if device.type != "cuda":
        return nullcontext, torch.amp.GradScaler("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return (
        lambda: torch.autocast("cuda", dtype=dtype),
        torch.amp.GradScaler("cuda", enabled=dtype == torch.float16),
    )


def load_faces(
    settings: TrainSettings, cache_root: Path, processes: Processes, report: Report
) -> FaceDataset:
    """The dataset's faces as the backbone's recipe makes them, detected once into the face cache (by
    the first process; the others wait)."""
    pipeline = build_pipeline(
        settings.detector,
        settings.detector_options,
        settings.backbone,
        settings.aligner,
        settings.aligner_options,
        embed=False,
    )
    cache = FaceCache(cache_root, pipeline)
    if not processes.writer:
        processes.barrier()
    dataset = FaceDataset.from_folder(Path(settings.data), cache, report if processes.writer else _silent)
    if processes.writer:
        processes.barrier()
    if len(dataset.identities) < 2:
        raise FacerecError(f"{settings.data}: triplets need at least two identities with faces")
    singles = single_image_identities(dataset.labels)
    if len(singles) == len(dataset.identities):
        raise FacerecError(
            f"{settings.data}: no identity has two images with faces: no positives to train on"
        )
    if singles and processes.writer:
        names = ", ".join(dataset.identities[label] for label in singles[:5]) + (
            ", ..." if len(singles) > 5 else ""
        )
        count = "1 identity has" if len(singles) == 1 else f"{len(singles)} identities have"
        report(f"{count} a single image ({names}): used only as negatives")
    return dataset


def _silent(message: str) -> None:
    pass


class Trainer:
    """One run's parts, built from its settings (and from its checkpoint when resuming)."""

    def __init__(
        self,
        settings: TrainSettings,
        device: torch.device,
        processes: Processes,
        cache_root: Path,
        report: Report,
        checkpoint: dict[str, Any] | None = None,
    ):
        self.settings = settings
        self.device = device
        self.processes = processes
        self.miner: Miner = registry().create("miner", settings.miner, **settings.miner_options)
        self.loss: Loss = registry().create("loss", settings.loss, **settings.loss_options)
        self.backbone: Backbone = registry().create("backbone", settings.backbone)
        self.dataset = load_faces(settings, cache_root, processes, report)
        self.network = self._network(checkpoint)
        self.index = label_index(self.dataset.labels)
        if isinstance(self.miner, DatasetMiner):
            self.sampler = AnchorSampler(self.dataset.labels, settings.batch_size, settings.seed)
        else:
            self.sampler = IdentitySampler(
                self.dataset.labels, settings.batch_size, settings.per_identity, settings.seed
            )
        self.augment = FaceAugment() if settings.augment else None
        self.frozen = freeze_through(self.network, settings.freeze)
        trainable = [p for p in self.network.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(settings.optimizer, trainable, settings.lr)
        self.autocast, self.scaler = mixed_precision(device)
        if checkpoint is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scaler.load_state_dict(checkpoint.get("scaler") or {})
        self.model = self._distributed(self.network)

    def _network(self, checkpoint: dict[str, Any] | None) -> nn.Module:
        """The trainable network: from the checkpoint when resuming, else from the run's weights file or
        pretrained weights.
        """
        settings = self.settings
        if checkpoint is None:
            return load_backbone(
                settings.backbone, settings.pretrained, settings.weights, str(self.device)
            ).module
        try:
            return self.backbone.build(checkpoint["model"]).to(self.device)
        except ValueError as error:
            raise FacerecError(f"checkpoint does not fit backbone '{settings.backbone}': {error}") from None

    def _distributed(self, network: nn.Module) -> nn.Module:
        if self.processes.world == 1:
            return network
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(network, device_ids=device_ids, find_unused_parameters=True)

    def train_mode(self) -> None:
        """Train mode, except frozen layers and batch norm (see the module's docstring)."""
        self.network.train()
        for module in self.frozen:
            module.eval()
        for module in self.network.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()

    def step(self, epoch: int, number: int, batch: torch.Tensor) -> StepResult:
        """One optimizer step on `batch` (dataset indices), the `number`-th of `epoch`."""
        began = time.perf_counter()
        seed_torch(self.settings.seed, epoch, number, "companions")
        companions = self._companions(batch)
        drawn = time.perf_counter() - began

        rows = torch.cat([batch, companions])
        loading = time.perf_counter()
        faces = self._load(rows, epoch, number)
        loaded = time.perf_counter() - loading
        seed_torch(self.settings.seed, epoch, number, "forward", self.processes.rank)
        with self.autocast():
            local = self.model(faces)
        embeddings = self.processes.gather(local.float(), len(rows))
        labels = self.dataset.labels[rows].to(self.device)

        mining = time.perf_counter()
        seed_torch(self.settings.seed, epoch, number, "mine")
        triplets = self._mine(embeddings, labels, len(batch))
        mined = drawn + time.perf_counter() - mining

        result = self.loss(embeddings, labels, triplets)
        if not torch.isfinite(result.loss.detach()):
            raise Diverged(epoch, number + 1, f"the loss is {result.loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(result.loss).backward()
        if not self.scaler.is_enabled() and not finite_gradients(self.network):
            raise Diverged(epoch, number + 1, "the gradients are not finite")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return StepResult(
            loss=result.loss.item(),
            stats={name: float(value) for name, value in result.stats.items()},
            faces=len(rows),
            seconds={"load": loaded, "mine": mined, "step": time.perf_counter() - began},
        )

    def _companions(self, batch: torch.Tensor) -> torch.Tensor:
        """What a dataset miner draws from the whole dataset for `batch`; nothing for other miners."""
        if not isinstance(self.miner, DatasetMiner):
            return torch.empty(0, dtype=torch.long)
        return self.miner.companions(batch, self.dataset.labels[batch], self.index)

    def _load(self, rows: torch.Tensor, epoch: int, number: int) -> torch.Tensor:
        """This process's share of the faces at `rows`, augmented by their position in the step."""
        start, stop, size = self.processes.share(len(rows))
        positions = padded(torch.arange(start, stop), size).tolist()
        seeds = [derived_seed(self.settings.seed, epoch, number, "augment", p) for p in positions]
        return self.dataset.faces(rows[positions].tolist(), self.augment, seeds).to(self.device)

    def _mine(self, embeddings: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Triplets:
        """Triplets among the batch's rows, and the companions' rows after them for a dataset miner."""
        if not isinstance(self.miner, DatasetMiner):
            return self.miner(embeddings, labels)
        return self.miner(
            embeddings[:batch_size], labels[:batch_size], embeddings[batch_size:], labels[batch_size:]
        )

    def epoch(self, epoch: int, progress: bool) -> dict[str, Any]:
        """Run one epoch; its metrics record (means over its steps)."""
        from tqdm import tqdm

        self.train_mode()
        batches = self.sampler.epoch(epoch)
        results: list[StepResult] = []
        with tqdm(
            total=len(batches),
            desc=f"epoch {epoch}/{self.settings.epochs}",
            unit="step",
            disable=not progress,
        ) as bar:
            for number, batch in enumerate(batches):
                results.append(self.step(epoch, number, batch))
                bar.set_postfix(loss=f"{results[-1].loss:.4f}")
                bar.update()
        return epoch_record(epoch, results, self.optimizer.param_groups[0]["lr"])

    def checkpoint(self, epoch: int) -> dict[str, Any]:
        """What `--resume` needs, as plain tensors, numbers, strings, lists and dicts."""
        return {
            "format": CHECKPOINT_FORMAT,
            "settings": asdict(self.settings),
            "epoch": epoch,
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": {"seed": torch.tensor(self.settings.seed), "batches_per_epoch": len(self.sampler)},
            "identities": self.dataset.identities,
            "recipe": self.dataset.recipe.to_json(),  # how faces became the network's input
        }


def finite_gradients(network: nn.Module) -> bool:
    """Whether every gradient of `network` is finite (a loss scaler checks its own on CUDA)."""
    gradients = [p.grad for p in network.parameters() if p.grad is not None]
    return bool(torch.stack([g.isfinite().all() for g in gradients]).all()) if gradients else True


def epoch_record(epoch: int, results: list[StepResult], lr: float) -> dict[str, Any]:
    """An epoch's metrics line: mean loss and statistics (null where a loss's statistic was not finite)."""
    seconds = sum(r.seconds["step"] for r in results)
    faces = sum(r.faces for r in results)
    record: dict[str, Any] = {"epoch": epoch, "loss": sum(r.loss for r in results) / len(results)}
    for name in results[0].stats:
        mean = sum(r.stats[name] for r in results) / len(results)
        record[name] = mean if math.isfinite(mean) else None
    record.update(
        steps=len(results),
        faces=faces,
        seconds=round(seconds, 3),
        faces_per_second=round(faces / seconds, 3) if seconds else None,
        lr=lr,
    )
    return record


def train(
    settings: TrainSettings,
    out: Path,
    resume: bool = False,
    device: str | None = "auto",
    cache_root: Path | None = None,
    report: Report = print,
    echo: Report = print,
    given: set[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Train up to `settings.epochs` epochs in all into the run folder `out`; returns the new epochs'
    records. `report` gets notes, `echo` a line per epoch. When resuming, the run's recorded settings
    apply (with this `data` folder and `epochs`); `given` names settings the user set explicitly, which
    must then agree with the recorded ones.
    """
    from facerec.training.facecache import default_root

    run = RunFolder(out)
    checkpoint = _checkpoint_to_resume(run, resume)
    if checkpoint is not None:
        settings = _resumed_settings(checkpoint["settings"], settings, given, run)
    first = checkpoint["epoch"] + 1 if checkpoint is not None else 1
    if first > settings.epochs:
        report(f"{out}: already trained {first - 1} epochs (--epochs {settings.epochs}); nothing to do")
        return []
    processes = start(resolve_device(device))
    try:
        target = _process_device(resolve_device(device), processes)
        trainer = Trainer(settings, target, processes, cache_root or default_root(), report, checkpoint)
        if checkpoint is not None and checkpoint["identities"] != trainer.dataset.identities:
            report(f"{settings.data}: the identities differ from those the run started with")
        records = []
        progress = processes.writer and sys.stderr.isatty()
        for epoch in range(first, settings.epochs + 1):
            try:
                record = trainer.epoch(epoch, progress)
            except Diverged as diverged:
                at = f"epoch {diverged.epoch}, step {diverged.step} of {len(trainer.sampler)}"
                raise run.diverged(at, diverged.cause, epoch - 1, settings.lr) from None
            records.append(record)
            bad = first_not_finite(trainer.network.state_dict())
            if bad is not None:  # the last step's update overflowed: no later step's loss will say so
                steps = len(trainer.sampler)
                at = f"epoch {epoch}, step {steps} of {steps}"
                raise run.diverged(at, f"its update left {bad} not finite", epoch - 1, settings.lr)
            if processes.writer:
                run.create()
                run.add_metrics(record)
                run.save_backbone(trainer.network.state_dict())
                run.save_checkpoint(trainer.checkpoint(epoch))
                echo(_epoch_line(record, settings.epochs))
        return records
    finally:
        stop(processes)


def _resumed_settings(
    recorded: dict[str, Any], asked: TrainSettings, given: set[str], run: RunFolder
) -> TrainSettings:
    """The recorded settings with this data folder and epoch count; explicit options must agree."""
    recorded = upgraded(recorded)
    for name in sorted(given - {"data", "epochs"}):
        if getattr(asked, name) != recorded.get(name):
            option = "--" + name.replace("_", "-")
            raise UsageError(
                f"{option} {getattr(asked, name)} differs from the run's {recorded.get(name)} "
                f"({run.checkpoint}); --resume continues a run with its own settings"
            )
    return TrainSettings(**{**upgraded(recorded), "data": asked.data, "epochs": asked.epochs})


def upgraded(recorded: dict[str, Any]) -> dict[str, Any]:
    """Settings recorded before input recipes: `margin` and `align` named the crop."""
    recorded = dict(recorded)
    margin, align = recorded.pop("margin", None), recorded.pop("align", None)
    if align == "landmarks":
        recorded.setdefault("aligner", "landmarks")
    elif margin:
        recorded.setdefault("aligner", "box")
        recorded.setdefault("aligner_options", {"margin": float(margin)})
    return recorded


def _checkpoint_to_resume(run: RunFolder, resume: bool) -> dict[str, Any] | None:
    if resume:
        checkpoint = run.load_checkpoint()
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise FacerecError(f"{run.checkpoint}: not a facerec training checkpoint")
        return checkpoint
    if run.checkpoint.exists():
        raise FacerecError(f"{run.path}: holds a run already; pass --resume to continue it, or another --out")
    return None


def _process_device(device: torch.device, processes: Processes) -> torch.device:
    """Each process of a CUDA run on its own GPU."""
    if device.type == "cuda" and processes.world > 1:
        return torch.device("cuda", processes.local_rank)
    return device


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['loss']:.4f}"]
    if record.get("active") is not None:
        parts.append(f"active triplets {record['active']:.0%}")
    if record.get("faces_per_second"):
        parts.append(f"{record['faces_per_second']:.1f} faces/s")
    return "  ".join(parts)


@dataclass
class CheckResult:
    """What `facerec train --check` verified with one step."""

    identities: int
    images: int
    batch: int
    faces: int
    triplets: int
    loss: float
    seconds: float

    def lines(self) -> list[str]:
        return [
            f"data: {self.images} faces of {self.identities} identities",
            f"step: batch of {self.batch}, {self.faces} faces embedded, {self.triplets} triplets mined",
            f"loss: {self.loss:.4f} (finite), gradients finite, weights updated, {self.seconds:.1f} s",
        ]


def check(
    settings: TrainSettings,
    device: str | None = "auto",
    cache_root: Path | None = None,
    report: Report = print,
) -> CheckResult:
    """One step on the first batch, writing nothing: the data loads, triplets are mined, the loss and its
    gradients are finite and the weights move. FacerecError says what failed.
    """
    from facerec.training.facecache import default_root

    trainer = Trainer(settings, resolve_device(device), Processes(), cache_root or default_root(), report)
    trainer.train_mode()
    before = [p.detach().clone() for p in trainer.network.parameters() if p.requires_grad]
    batch = trainer.sampler.epoch(1)[0]
    try:
        result = trainer.step(1, 0, batch)
    except Diverged as diverged:
        raise FacerecError(f"check: {diverged.cause} on the first batch") from None
    after = [p.detach() for p in trainer.network.parameters() if p.requires_grad]
    if not all(torch.isfinite(p).all() for p in after):
        raise FacerecError("check: the weights are not finite after one step")
    triplets = int(result.stats.get("triplets", 0))
    if result.loss > 0 and not any(not torch.equal(b, a) for b, a in zip(before, after, strict=True)):
        raise FacerecError("check: one step left every weight unchanged")
    if not triplets:
        report("check: no triplets in the first batch: the loss is zero and nothing is learnt from it")
    return CheckResult(
        identities=len(trainer.dataset.identities),
        images=len(trainer.dataset),
        batch=len(batch),
        faces=result.faces,
        triplets=triplets,
        loss=result.loss,
        seconds=result.seconds["step"],
    )
