"""train: produce the baseline (train the default CNN, or import the user's model) and check it fits."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.arrays import Array
from tasks.config import BaselineConfig, GatesConfig, TrainConfig
from tasks.data import Preprocess, Split, load_preprocess, load_split
from tasks.errors import ModelError, brief
from tasks.io import atomic_dir, read_json, sha256_file, write_json
from tasks.lineage import module_source_sha256
from tasks.models import (
    DEFAULT_FACTORY,
    build_from_factory,
    count_macs_params,
    load_pt2,
    load_state_dict_file,
)

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# torch's own default on this machine (its physical cores), read before any build pinned the
# process to BUILD_THREADS: the baseline's training uses it unless train.threads is set
MACHINE_THREADS = torch.get_num_threads()
# every variant build runs torch with this many threads, whichever runner builds it (a thread
# of the flow, a Dask worker, a spawned child): float reductions split over another number of
# threads add up in another order, and the same inputs gave other bytes under Dask
BUILD_THREADS = 1


@dataclass(frozen=True)
class FitSettings:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-4
    augment: bool = True
    # fine-tuning: the first `freeze_epochs` train only parameters named `head_prefix`...
    freeze_epochs: int = 0
    head_prefix: str | None = None
    max_steps: int | None = None  # ... and an epoch stops after this many steps (None: all)
    # after the last epoch, batch-norm statistics are measured again on training images (off
    # where they are part of what is trained: QAT freezes them; and after frozen epochs)
    recalibrate_norms: bool = True
    # (parameter name, factor): that parameter trains at lr times the factor, without weight
    # decay (QAT's learned quantization scales: Adam's step is lr whatever the gradient, and a
    # scale of 0.02 moved by 5e-4 a step is a range that jumps 2.5 % a step)
    lr_factors: tuple[tuple[str, float], ...] = ()


# images the batch-norm statistics are measured on after training: a few seconds even for
# EfficientNet-Lite0 at 96 px on 2 cores, and thousands of pixels a channel for each mean
NORM_IMAGES = 2048


@dataclass(frozen=True)
class BaselineResult:
    model: nn.Module
    kind: str  # "train", "factory", "pt2" or "pretrained"
    factory: str | None
    factory_kwargs: dict[str, Any]
    test_accuracy: float
    macs: int | None
    params: int
    pretrained_sha256: str | None = None  # the ImageNet weights fine-tuned from


def _param_groups(model: nn.Module, settings: FitSettings) -> list[dict[str, Any]]:
    factors = dict(settings.lr_factors)
    groups: dict[float | None, list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        groups.setdefault(factors.get(name), []).append(parameter)
    return [
        {"params": params}
        if factor is None
        else {"params": params, "lr": settings.lr * factor, "weight_decay": 0.0}
        for factor, params in groups.items()
    ]


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    preprocess: Preprocess,
    settings: FitSettings,
    seed: int,
    label: str,
    loss_fn: LossFn | None = None,
) -> nn.Module:
    """Train with AdamW + one-cycle LR; print one progress line per epoch."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_train = torch.from_numpy(preprocess.normalize(train.x))
    y_train = torch.from_numpy(train.y)
    optimizer = torch.optim.AdamW(
        _param_groups(model, settings), lr=settings.lr, weight_decay=settings.weight_decay
    )
    steps_per_epoch = max(1, -(-len(train) // settings.batch_size))
    if settings.max_steps is not None:
        steps_per_epoch = min(steps_per_epoch, settings.max_steps)
    steps = settings.epochs * steps_per_epoch
    every = max(1, steps_per_epoch // 10)  # a progress line about every tenth of a long epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=steps
    )
    loss_fn = loss_fn or (
        lambda logits, labels, _inputs: nn.functional.cross_entropy(logits, labels)
    )
    val_acc: float | None = None
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        frozen = _freeze_backbone(model, settings, epoch)
        model.train()
        if frozen:  # a frozen backbone keeps its ImageNet batch-norm statistics too
            for name, module in model.named_modules():
                if name and not f"{name}.".startswith(str(settings.head_prefix)):
                    module.eval()
        order = torch.from_numpy(rng.permutation(len(train)))
        total, seen = 0.0, 0
        for step, batch in enumerate(order.split(settings.batch_size)[:steps_per_epoch], 1):
            inputs = x_train[batch]
            if settings.augment:
                inputs = _random_shift(inputs, rng)
            loss = loss_fn(model(inputs), y_train[batch], inputs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total, seen = total + float(loss.detach()) * len(batch), seen + len(batch)
            if steps_per_epoch >= 50 and step % every == 0:
                print(
                    f"{label}: epoch {epoch} step {step}/{steps_per_epoch} loss "
                    f"{total / seen:.4f} ({(time.perf_counter() - started) / step:.3f} s/step)",
                    flush=True,
                )
        val_acc = accuracy(predict(model, preprocess.normalize(val.x)), val.y)
        print(
            f"{label}: epoch {epoch}/{settings.epochs} loss {total / seen:.4f} "
            f"val acc {val_acc:.4f} ({time.perf_counter() - started:.1f}s)"
            + (" backbone frozen" if frozen else ""),
            flush=True,
        )
    # a head trained on a frozen backbone learnt on its (ImageNet) statistics: those stay
    if settings.recalibrate_norms and val_acc is not None and settings.freeze_epochs == 0:
        recalibrated = recalibrate_norms(model, x_train, rng, settings.batch_size)
        if recalibrated:
            after = accuracy(predict(model, preprocess.normalize(val.x)), val.y)
            print(
                f"{label}: batch-norm statistics of {recalibrated} layers measured again on "
                f"{min(len(train), NORM_IMAGES)} training images: val acc {val_acc:.4f} → "
                f"{after:.4f}",
                flush=True,
            )
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model.eval()


def recalibrate_norms(
    model: nn.Module, x_train: torch.Tensor, rng: np.random.Generator, batch_size: int
) -> int:
    """Measure every batch norm's running mean and variance again, as averages over up to
    NORM_IMAGES training images under the final weights, and return how many layers there
    were. The running averages training leaves lag the weights: torchvision's MobileNetV3 keeps
    them with momentum 0.01, and after pruning and 5 epochs of fine-tuning its running statistics
    still described the unpruned net (val accuracy 0.20 for the first epochs)."""
    from torch.optim.swa_utils import update_bn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not any(m.track_running_stats for m in norms):
        return 0
    picked = torch.from_numpy(rng.permutation(len(x_train))[:NORM_IMAGES])
    with torch.no_grad():
        update_bn((x_train[batch] for batch in picked.split(batch_size)), model)
    return sum(m.track_running_stats for m in norms)


def _freeze_backbone(model: nn.Module, settings: FitSettings, epoch: int) -> bool:
    """Train only the head in the first freeze_epochs epochs (no backward through the
    backbone: about 3x cheaper a step); True while frozen."""
    frozen = settings.head_prefix is not None and epoch <= settings.freeze_epochs
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not frozen or name.startswith(str(settings.head_prefix)))
    return frozen


def _random_shift(inputs: torch.Tensor, rng: np.random.Generator, pad: int = 2) -> torch.Tensor:
    """Shift the whole batch by up to `pad` pixels: cheap augmentation that helps small data."""
    dy, dx = (int(v) for v in rng.integers(-pad, pad + 1, size=2))
    return torch.roll(inputs, shifts=(dy, dx), dims=(2, 3))


@torch.no_grad()
def predict(model: nn.Module, x: Array, batch_size: int = 256) -> Array:
    """Logits for normalised NCHW float32 inputs."""
    model.eval()
    chunks = [model(torch.from_numpy(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat(chunks).float().numpy()


def accuracy(logits: Array, labels: Array) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def check_model_fits(model: nn.Module, preprocess: Preprocess, origin: str) -> None:
    """The model must take the data's input shape and give one logit per class."""
    example = torch.zeros(2, *preprocess.input_shape)
    try:
        with torch.no_grad():
            out = model.eval()(example)
    except Exception as exc:  # shape errors surface as several types
        if _takes_one_image_only(model, preprocess):
            raise ModelError(
                f"{origin}: model takes a batch of 1 only (exported with a fixed batch size); "
                "export it with a dynamic batch: torch.export.export(model, (x,), "
                "dynamic_shapes=({0: torch.export.Dim('batch')},))"
            ) from None
        raise ModelError(
            f"{origin}: model rejects input of shape {tuple(example.shape[1:])} "
            f"(data.channels/image_size) ({brief(exc)})"
        ) from None
    if not isinstance(out, torch.Tensor) or out.shape != (2, preprocess.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"{origin}: model output has shape {shape} for a batch of 2; "
            f"expected (2, {preprocess.num_classes}) — one logit per class"
        )


def _takes_one_image_only(model: nn.Module, preprocess: Preprocess) -> bool:
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *preprocess.input_shape))
    except Exception:  # the shape itself is wrong: the caller says so
        return False
    return True


def make_baseline(
    cfg: BaselineConfig,
    train_cfg: TrainConfig,
    data_dir: Path,
    seed: int,
    root: Path = Path("."),
) -> BaselineResult:
    """Train the default model, or load and check the user's model."""
    preprocess = load_preprocess(data_dir)
    # set every time: a build earlier in this process (a fleet runs many nightlies in one)
    # pinned torch to BUILD_THREADS, and a thread count changes the trained bytes
    torch.set_num_threads(train_cfg.threads or MACHINE_THREADS)
    factory: str | None = None
    kwargs: dict[str, Any] = {}
    pretrained_sha256: str | None = None
    if cfg.source == "train":
        # baseline.factory with source train: the user's architecture, trained here from scratch
        factory, kwargs = (
            (cfg.factory, cfg.factory_kwargs)
            if cfg.factory
            else (DEFAULT_FACTORY, default_kwargs(preprocess, train_cfg.width))
        )
        settings = FitSettings(
            train_cfg.epochs, train_cfg.batch_size, train_cfg.lr, train_cfg.weight_decay
        )
        torch.manual_seed(seed)
        model = build_from_factory(factory, kwargs)
        train, val = load_split(data_dir, "train"), load_split(data_dir, "val")
        fit(model, train, val, preprocess, settings, seed, "train")
    elif cfg.source == "pretrained":
        model, factory, kwargs, pretrained_sha256 = _fine_tune(
            cfg, train_cfg, data_dir, preprocess, seed, root
        )
    elif cfg.source == "factory":
        factory, kwargs = str(cfg.factory), cfg.factory_kwargs
        model = load_state_dict_file(build_from_factory(factory, kwargs), root / str(cfg.path))
    else:
        model = load_pt2(root / str(cfg.path))
    origin = f"baseline ({cfg.path or factory or DEFAULT_FACTORY})"
    check_model_fits(model, preprocess, origin)
    test = load_split(data_dir, "test")
    test_acc = accuracy(predict(model, preprocess.normalize(test.x)), test.y)
    macs, params = count_macs_params(model, preprocess.input_shape)
    return BaselineResult(
        model=model.eval(),
        kind=cfg.source,
        factory=factory,
        factory_kwargs=kwargs,
        test_accuracy=test_acc,
        macs=macs,
        params=params,
        pretrained_sha256=pretrained_sha256,
    )


def _fine_tune(
    cfg: BaselineConfig,
    train_cfg: TrainConfig,
    data_dir: Path,
    preprocess: Preprocess,
    seed: int,
    root: Path,
) -> tuple[nn.Module, str, dict[str, Any], str | None]:
    """Build the pretrained backbone with a new head and fine-tune it on the train split."""
    from tasks.pretrained import build_pretrained, classifier_prefix

    arch = str(cfg.arch)
    torch.manual_seed(seed)  # the new head's initial weights
    built = build_pretrained(
        arch,
        preprocess.num_classes,
        preprocess.channels,
        preprocess.image_size,
        cfg.width,
        root / cfg.weights_dir,
    )
    settings = FitSettings(
        train_cfg.epochs,
        train_cfg.batch_size,
        train_cfg.lr,
        train_cfg.weight_decay,
        freeze_epochs=train_cfg.freeze_backbone_epochs,
        head_prefix=classifier_prefix(arch),
        max_steps=train_cfg.max_steps_per_epoch,
    )
    train, val = load_split(data_dir, "train"), load_split(data_dir, "val")
    fit(built.model, train, val, preprocess, settings, seed, "train")
    return built.model, built.factory, built.factory_kwargs, built.weights_sha256


def default_kwargs(preprocess: Preprocess, width: int) -> dict[str, Any]:
    """Constructor arguments of the default CNN for this data."""
    return {
        "num_classes": preprocess.num_classes,
        "in_channels": preprocess.channels,
        "width": width,
    }


def save_baseline(
    result: BaselineResult, cfg: BaselineConfig, out_dir: Path, root: Path = Path(".")
) -> None:
    """Write the baseline in a form every later stage can load, atomically."""
    with atomic_dir(out_dir) as staging:
        if result.factory is None:
            weights = staging / "model.pt2"
            shutil.copyfile(root / str(cfg.path), weights)
            record: dict[str, Any] = {"kind": "pt2", "file": weights.name}
        else:
            weights = staging / "weights.pt"
            torch.save(result.model.state_dict(), weights)
            record = {
                "kind": "factory",
                "factory": result.factory,
                "factory_kwargs": result.factory_kwargs,
                # every later stage rebuilds the model from this code: a changed module must
                # change the baseline (and what dvc repro reruns), not only new weights
                "factory_source_sha256": module_source_sha256(
                    result.factory.partition(":")[0], "baseline.factory"
                ),
                "file": weights.name,
            }
        if result.pretrained_sha256 is not None:
            record["pretrained_sha256"] = result.pretrained_sha256
        record.update(
            test_accuracy=result.test_accuracy,
            macs=result.macs,
            params=result.params,
            sha256=sha256_file(weights),
        )
        write_json(staging / "baseline.json", record)


def load_baseline(baseline_dir: Path) -> nn.Module:
    """Rebuild the baseline torch module saved by `save_baseline`."""
    baseline_dir = Path(baseline_dir)
    record_path = baseline_dir / "baseline.json"
    if not record_path.exists():
        raise ModelError(f"{record_path}: not found; run the 'train' stage first")
    record = read_json(record_path)
    weights = baseline_dir / record["file"]
    if record["kind"] == "pt2":
        return load_pt2(weights).eval()
    model = build_from_factory(record["factory"], record["factory_kwargs"])
    return load_state_dict_file(model, weights).eval()


# An imported baseline this far below its accuracy gate is more likely fed wrongly than bad.
FAR_BELOW_GATE = 0.1


def import_hint(
    source: str, test_accuracy: float, min_accuracy: float | None, preprocess: Preprocess
) -> str | None:
    """What to check when an imported baseline scores far below the min_accuracy gate; None
    when it is trained here, has no gate, or is near or above it."""
    if source == "train" or min_accuracy is None:
        return None
    if test_accuracy >= min_accuracy - FAR_BELOW_GATE:
        return None
    order = "RGB" if preprocess.channels == 3 else "grayscale"
    names = preprocess.class_names or [str(i) for i in range(preprocess.num_classes)]
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return (
        f"baseline: the imported model scores {test_accuracy:.2f} on the test split, far below "
        f"min_accuracy {min_accuracy:g}. If it scored well where it was trained, check how its "
        f"inputs are made here: normalisation (mean {preprocess.mean}, std {preprocess.std}; "
        "data.normalize / data.mean, data.std), channel order "
        f"({order}, data.channels {preprocess.channels}), input size "
        f"(data.image_size {preprocess.image_size}, bilinear resize) and label order "
        f"(labels 0.. are {shown})"
    )


def mmacs(macs: int | None) -> str:
    return "unknown" if macs is None else f"{macs / 1e6:.1f} M"


def import_hints(
    baseline: BaselineConfig, gates: GatesConfig, test_accuracy: float, data_dir: Path
) -> list[str]:
    """What to check when an imported baseline scores far below its accuracy gate."""
    hint = import_hint(
        baseline.source,
        test_accuracy,
        gates.for_variant("baseline").min_accuracy,
        load_preprocess(data_dir),
    )
    return [hint] if hint else []


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al.: alpha·T²·KL(teacher_T ‖ student_T) + (1 − alpha)·CE(student, labels).
    Here, below the techniques: distilled trains with it, pruned fine-tunes with it."""
    from torch.nn import functional as F

    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, labels)
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard
