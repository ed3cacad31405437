"""The training engine: the paper's recipe with checkpoints, exact resume, logs and torchrun DDP.

One iteration = one optimizer step over ``optim.batch_size`` images: ``accumulate`` micro-batches
of ``batch_size / (world_size * accumulate)`` images on each rank. The learning rate follows the
poly schedule per iteration; the new layers train at 10x (see :mod:`pspnet.engine.optim`).

Exact resume: the data order of epoch ``e`` depends only on ``(seed, e)`` and each sample's
augmentation only on ``(seed, e, index)``; a checkpoint records the epoch, the steps already taken
in it and every RNG state, and a resumed run skips the consumed samples of that epoch without
loading them. In deterministic CPU mode a killed-and-resumed run ends with bit-identical weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from pspnet.config import TrainConfig
from pspnet.data.loader import EpochKeyedDataset
from pspnet.engine.distributed import (
    DistContext,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
    lost_peer_error,
    same_on_every_rank,
)
from pspnet.engine.optim import build_optimizer, poly_lr, segmentation_loss, set_lr
from pspnet.engine.sampler import EpochStreamSampler
from pspnet.engine.train_log import METRICS_NAME, TrainLogger
from pspnet.engine.train_setup import (
    build_model,
    check_config,
    open_train_datasets,
    resolve_amp,
    resolve_device,
    seed_everything,
    set_train_mode,
    verify_or_refuse,
)
from pspnet.errors import DataError, InputError, PeerLostError, PSPNetError
from pspnet.io.checkpoint import atomic_write, load_state_dict_into, save_model
from pspnet.io.train_state import (
    BEST_NAME,
    OutputLock,
    capture_rng,
    checkpoint_name,
    find_last_checkpoint,
    load_checkpoint,
    lock_output,
    restore_rng,
    save_checkpoint,
)

__all__ = ["NonFiniteLossError", "TrainResult", "train"]

FINAL_MODEL_NAME = "model.safetensors"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf and the config says ``nonfinite: abort``."""


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        model_path: the final weights (``OUT/model.safetensors``; loadable by predict/eval).
        best_miou: best validation mIoU (None without validation); best_path: its weights.
        history: the metrics.jsonl entries of this process's run (train and val lines).
        images_per_s: training throughput over the whole run (all ranks), validation and
            checkpoint writing excluded.
        iterations: optimizer steps in the schedule; skipped_steps: those skipped (non-finite).
        steps_run: optimizer steps taken by this call (0 when a finished run is resumed).
        model: the trained network (unwrapped, on the training device).
    """

    model_path: Path
    best_miou: float | None
    best_path: Path | None
    history: list[dict[str, Any]]
    images_per_s: float
    iterations: int
    skipped_steps: list[int] = field(default_factory=list)
    model: nn.Module | None = field(default=None, repr=False)
    steps_run: int = 0


# ----------------------------------------------------------------------------- setup helpers


def _batch_names(dataset: Any, indices: list[int]) -> list[str]:
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return [str(i) for i in indices]
    return [str(getattr(samples[i], "name", i)) for i in indices]


RESUME_MAY_CHANGE = ("optim.base_lr",)
"""Fingerprint entries a resume may change (the way out of a diverged run; the engine says so)."""


def _fingerprint_diff(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """The settings that differ between a checkpoint's fingerprint and the current one, except
    those in :data:`RESUME_MAY_CHANGE`."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        path = f"{prefix}{key}"
        if path in RESUME_MAY_CHANGE:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            diffs.extend(_fingerprint_diff(a, b, f"{path}."))
        elif a != b:
            diffs.append(f"{path}: checkpoint {a!r} vs now {b!r}")
    return diffs


def _validate(
    model: nn.Module, val_dataset: Any, config: TrainConfig, keep_examples: int = 0
) -> tuple[dict[str, Any], list[Any]]:
    """Validation metrics with the configured protocol (``config.eval``), and the first
    ``keep_examples`` predictions (for TensorBoard).

    The protocol is ``pspnet eval``'s, so that ``val_miou`` and ``best.safetensors`` agree with
    what it reports later: the authors' datasets are resized to their base size at scale 1.0,
    and the sliding window is the training crop (recorded in the model's dataset info).
    """
    from pspnet.engine.evaluate import evaluate, protocol_base_size

    model.eval()
    model_info = getattr(model, "dataset_info", None)
    slide = config.eval.mode == "slide" and model_info is not None
    with torch.no_grad():
        result = evaluate(
            model,
            val_dataset,
            mode=config.eval.mode,
            crop_size=int(model_info.crop_size) if slide else None,
            base_size=protocol_base_size(val_dataset),
            scales=tuple(config.eval.scales),
            flip=config.eval.flip,
            progress=False,
            limit=config.eval.limit,
            keep_examples=keep_examples,
        )
    m = result.metrics
    scores = {"val_miou": float(m.miou), "val_macc": float(m.macc), "val_allacc": float(m.allacc)}
    return scores, result.examples


def _refuse_used_output(out: Path) -> None:
    """Without --resume, an output folder that already holds a run (even one killed before its
    first checkpoint) is refused: its metrics.jsonl and weights would mix with the new run's."""
    used = [
        name
        for name in ("last", "checkpoints", METRICS_NAME, BEST_NAME, FINAL_MODEL_NAME)
        if (out / name).exists()
    ]
    if used:
        raise InputError(
            f"{out} already holds a training run ({', '.join(used)}); pass --resume (resume=True in "
            "Python) to continue it, or choose a new --out (output.dir)"
        )


MAX_SKIPS_IN_A_ROW = 20
"""Non-finite steps in a row after which ``nonfinite: skip`` stops: one bad batch is skipped, but
this many in a row means the model diverged even if its weights are still finite (huge)."""


def _diverged_message(
    iteration: int, out: Path, what: str = "the weights hold NaN/inf", streak_start: int | None = None
) -> str:
    """What to do when training diverged: advice that the resume check accepts. ``OUT/last`` names
    a checkpoint written before any run of non-finite steps (none is written during one)."""
    last = find_last_checkpoint(out)
    if last is None:
        way_out = (
            "No checkpoint was written before it diverged: rerun with --resume (which starts over when "
            "there is no checkpoint) and a lower optim.base_lr"
        )
    elif streak_start is not None and last.name == checkpoint_name(streak_start - 1):
        way_out = (
            f"The last checkpoint, {last}, holds the weights whose loss was non-finite at iteration "
            f"{streak_start}, so a resume from it diverges again: start over in a new --out with a lower "
            "optim.base_lr"
        )
    else:
        way_out = (
            f"Rerun with --resume (it continues from {last}) and a lower optim.base_lr; if it diverges "
            "again, that checkpoint is already damaged: start over in a new --out with the lower rate"
        )
    return f"iteration {iteration}: {what} (training diverged); not writing a checkpoint. {way_out}"


# ----------------------------------------------------------------------------- the loop


def _micro_batch_fix(accumulate: int) -> str:
    """The change that raises the micro-batch: less accumulation if there is any, else a bigger batch."""
    return "lower optim.accumulate" if accumulate > 1 else "raise optim.batch_size"


def train(config: TrainConfig, train_dataset: Any = None, val_dataset: Any = None) -> TrainResult:
    """Train a PSPNet as ``config`` says; see the module docstring.

    Args:
        config: a validated :class:`~pspnet.config.TrainConfig` (``pspnet.config.load_config``).
        train_dataset: a dataset following the ``SegmentationDataset`` contract (items
            ``{"image", "mask", "index"}``, ``info``, ``set_epoch``); None = open ``config.data``.
        val_dataset: a dataset with ``info`` and ``load_raw``; None = ``config.data.val_split``
            when the training set comes from the config, else no validation.

    Launched by torchrun (``WORLD_SIZE`` > 1) it trains with DistributedDataParallel; only rank 0
    writes files, logs and the progress bar.

    Raises:
        InputError / DataError: bad settings or data, named with the fix, before training starts;
            also when another run uses ``output.dir`` (it holds ``OUT/.lock``, see
            :func:`~pspnet.io.train_state.lock_output`).
        NonFiniteLossError: a NaN/inf loss with ``nonfinite: abort``.
    """
    config.validate()
    ctx = init_distributed(
        "cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu", config.dist_timeout_s
    )
    # Determinism switches are process-global: put them back for whatever runs after train().
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    started: list[bool] = []  # appended to when the first step begins
    lock: OutputLock | None = None
    try:
        check_config(config)
        lock = _lock_output(Path(config.output.dir), ctx)
        return _train(config, ctx, train_dataset, val_dataset, started)
    except PeerLostError:
        raise
    except RuntimeError as exc:
        lost = lost_peer_error(exc, ctx.rank) if ctx.enabled else None
        if lost is not None:
            raise lost from exc
        raise
    except (PSPNetError, ValueError) as exc:
        if ctx.enabled and not started:  # the checks before training: every rank made them alike
            same_on_every_rank(exc)
        raise
    finally:
        if lock is not None:
            lock.release()
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]
        cleanup_distributed()


def _lock_output(out: Path, ctx: DistContext) -> OutputLock | None:
    """Rank 0 takes ``OUT/.lock`` (two runs writing one folder interleave their checkpoints and
    logs); when it cannot, every rank stops with its message instead of waiting for rank 0."""
    lock, error = None, None
    if ctx.is_main:
        try:
            lock = lock_output(out)
        except (PSPNetError, OSError) as exc:
            error = exc
    if ctx.enabled:
        shared = [str(error) if error is not None else None]
        torch.distributed.broadcast_object_list(shared, src=0)
        if shared[0] is not None and error is None:
            error = InputError(shared[0])
    if error is not None:
        raise error
    return lock


def _train(
    config: TrainConfig, ctx: DistContext, train_dataset: Any, val_dataset: Any, started: list[bool]
) -> TrainResult:
    device = resolve_device(config.device, ctx.local_rank)
    amp_dtype = resolve_amp(config.optim.amp, device)
    seed_everything(config.seed, config.deterministic)
    out = Path(config.output.dir)
    o = config.optim
    if not config.resume:
        _refuse_used_output(out)

    # --- data
    from pspnet.models.registry import get_preset

    preprocess = get_preset(config.model.preset).preprocess  # a known name: check_config
    from_config = train_dataset is None
    if from_config:
        train_dataset, config_val = open_train_datasets(config, preprocess)
        if config.data.verify:
            verify_or_refuse(train_dataset, config.data.verify_max_files, ctx.rank)
            if config_val is not None and val_dataset is None:  # a bad val file must not end the run
                limits = [n for n in (config.data.verify_max_files, config.eval.limit) if n is not None]
                verify_or_refuse(config_val, min(limits, default=None), ctx.rank, "validation")
        val_dataset = val_dataset if val_dataset is not None else config_val
    if not config.eval.enabled:
        val_dataset = None
    info = train_dataset.info
    ignore_index = int(info.ignore_index)
    if config.data.ignore_index is not None and config.data.ignore_index != ignore_index:
        raise InputError(
            f"data.ignore_index={config.data.ignore_index} but the training dataset's ignore index is "
            f"{ignore_index}; set data.ignore_index=null (or open the dataset with that ignore_index)"
        )
    if from_config:  # the crop it is trained at: the default window of `pspnet eval --mode slide`
        info = dataclasses.replace(info, crop_size=config.data.crop_size)

    # --- model, optimizer, precision
    model = build_model(config, info, ctx.is_main)
    uses_bin1 = model.ppm is not None and 1 in model.config.bins
    per_rank = o.batch_size // ctx.world_size
    if o.batch_size % (ctx.world_size * o.accumulate):
        raise InputError(
            f"optim.batch_size={o.batch_size} must be divisible by world_size x accumulate = "
            f"{ctx.world_size} x {o.accumulate}"
        )
    micro = per_rank // o.accumulate
    if micro < 2 and uses_bin1 and not config.model.freeze_bn:
        raise InputError(
            f"the micro-batch per step is {micro} image (batch_size {o.batch_size} / "
            f"{ctx.world_size} ranks / accumulate {o.accumulate}); BatchNorm on the 1x1 pyramid bin "
            f"needs >= 2: {_micro_batch_fix(o.accumulate)} or set model.freeze_bn=true"
        )
    model.to(device)
    if o.channels_last:
        model.to(memory_format=torch.channels_last)
    if ctx.enabled and device.type == "cuda" and o.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if o.compile:
        model.compile()  # in place: the state dict keeps its key names (no ``_orig_mod.``)
    optimizer = build_optimizer(
        model, o.base_lr, momentum=o.momentum, weight_decay=o.weight_decay, head_lr_mult=o.head_lr_mult
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    raw_model = model
    if ctx.enabled:
        unused = o.aux_weight == 0 and getattr(model, "aux_classifier", None) is not None
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused
        )

    # --- data loader with resumable order
    sampler = EpochStreamSampler(train_dataset, ctx.rank, ctx.world_size, config.seed)
    generator = torch.Generator()
    loader = DataLoader(
        EpochKeyedDataset(train_dataset, config.seed, ctx.rank),
        batch_size=micro,
        sampler=sampler,
        num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        generator=generator,
        persistent_workers=config.data.num_workers > 0,  # the epoch travels with each index
    )
    steps_per_epoch = (len(sampler.inner) // micro) // o.accumulate
    if steps_per_epoch < 1:
        raise InputError(
            f"the training set has {len(train_dataset)} images, fewer than one batch of {o.batch_size}; "
            "lower optim.batch_size or add data"
        )
    max_iter = o.iterations if o.iterations is not None else o.epochs * steps_per_epoch

    # --- output folder and resume
    logger = TrainLogger(out, ctx.is_main, config.output.tensorboard)
    iteration, epoch, epoch_step = 0, 0, 0
    best_miou: float | None = None
    skipped: list[int] = []
    fingerprint = config.fingerprint()
    fingerprint["data"]["ignore_index"] = ignore_index  # the value in effect (null = the dataset's)
    last = find_last_checkpoint(out)
    rng_state = None
    if last is not None:
        tensors, state = load_checkpoint(last)
        saved = json.loads(state["fingerprint"])
        diffs = _fingerprint_diff(saved, fingerprint)
        if diffs:
            raise InputError(
                f"cannot resume {last}: the config differs from the checkpoint's in {'; '.join(diffs[:6])}; "
                "restore those settings or start a new --out"
            )
        load_state_dict_into(raw_model, tensors)
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        iteration, epoch, epoch_step = int(state["iteration"]), int(state["epoch"]), int(state["epoch_step"])
        best_miou = state.get("best_miou")
        skipped = list(state.get("skipped", []))
        rng_state = state["rng"]
        logger.message(f"resumed from {last} at iteration {iteration} (epoch {epoch}, step {epoch_step})")
        old_lr = saved.get("optim", {}).get("base_lr")
        if old_lr is not None and old_lr != o.base_lr:
            logger.message(
                f"optim.base_lr changed from {old_lr} to {o.base_lr}: the poly schedule goes on from "
                f"iteration {iteration} at the new rate (no longer bit-identical to an uninterrupted run)"
            )
    elif config.resume:
        logger.message(f"--resume: no checkpoint in {out} yet; starting from scratch")
    # What an interrupted run logged after its checkpoint is trained again: log it once.
    kept = logger.truncate(iteration) if config.resume else []
    # The final validation runs after the final checkpoint: its score is in the log, not the state.
    logged = [float(e["val_miou"]) for e in kept if "val_miou" in e]
    best_miou = max([*logged, *([best_miou] if best_miou is not None else [])], default=None)
    if ctx.is_main and best_miou is None and (out / BEST_NAME).exists():
        (out / BEST_NAME).unlink()  # from a validation after the checkpoint, which is redone
    validated_at = max((int(e["iter"]) for e in kept if "val_miou" in e), default=None)
    time_offset = max((float(e["time"]) for e in kept if "time" in e), default=0.0)
    config_yaml = config.to_yaml()
    if ctx.is_main:
        atomic_write(out / "config.yaml", lambda tmp: Path(tmp).write_text(config_yaml, encoding="utf-8"))

    def checkpoint_state() -> dict[str, Any]:
        return {
            "iteration": iteration,
            "epoch": epoch,
            "epoch_step": epoch_step,
            "max_iter": max_iter,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "rng": capture_rng(),
            "best_miou": best_miou,
            "skipped": skipped,
            "fingerprint": json.dumps(fingerprint, sort_keys=True, default=str),
            "config_hash": config.fingerprint_hash(),
        }

    def all_finite() -> bool:
        return all(
            bool(torch.isfinite(p).all()) for p in raw_model.state_dict().values() if p.is_floating_point()
        )

    def validate(at: int, at_epoch: int) -> None:
        nonlocal best_miou, validated_at
        keep = config.output.tensorboard_images if logger.wants_images else 0
        scores, examples = _validate(raw_model, val_dataset, config, keep)
        set_train_mode(model, config.model.freeze_bn)
        logger.log({"iter": at, "epoch": at_epoch, **scores})
        logger.log_predictions(at, examples, val_dataset.info.palette)
        logger.message(f"iteration {at}: val mIoU {100 * scores['val_miou']:.2f}")
        validated_at = at
        if best_miou is None or scores["val_miou"] > best_miou:
            best_miou = scores["val_miou"]
            if ctx.is_main:
                save_model(raw_model, out / BEST_NAME, extra={"iteration": str(at)})

    # --- loop
    from tqdm import tqdm

    bar = tqdm(
        total=max_iter,
        initial=iteration,
        desc="train",
        disable=not (ctx.is_main and config.output.progress),
        dynamic_ncols=True,
        file=sys.stderr,
    )
    buffers = [b for b in raw_model.buffers() if b.is_floating_point()]
    if rng_state is not None:
        restore_rng(rng_state)
    set_train_mode(model, config.model.freeze_bn)
    images_per_step = micro * o.accumulate * ctx.world_size
    run_start = time.perf_counter()
    window_start, window_losses, window_aux, window_total, window_steps = run_start, [], [], [], 0
    skips_in_a_row = 0  # a run of non-finite steps: no checkpoint is written while it lasts
    run_steps, paused = 0, 0.0  # paused: validation and checkpoint time, not training throughput
    if epoch_step >= steps_per_epoch:  # resumed on another number of ranks: epochs got shorter
        epoch, epoch_step = epoch + 1, 0
    # One stream of batches for the whole run: the workers prefetch across epoch boundaries.
    sampler.start(epoch, epoch_step * o.accumulate * micro, steps_per_epoch * o.accumulate * micro)
    generator.manual_seed(config.seed * 1_000_003 + epoch)
    batches = iter(loader)
    started.append(True)
    while iteration < max_iter:
        lr = poly_lr(o.base_lr, iteration, max_iter, o.power)
        set_lr(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        saved_buffers = [b.detach().clone() for b in buffers]
        finite = True
        step_loss, step_aux, step_total, indices = 0.0, 0.0, 0.0, []
        for k in range(o.accumulate):
            batch = next(batches)
            images = batch["image"].to(device, non_blocking=True)
            masks = batch["mask"].to(device, non_blocking=True)
            if o.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            indices.extend(int(i) for i in batch["index"])
            sync = contextlib.nullcontext()
            if ctx.enabled and k < o.accumulate - 1:
                sync = model.no_sync()
            with sync:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    outputs = model(images)
                loss, main, aux = segmentation_loss(
                    outputs, masks, aux_weight=o.aux_weight, ignore_index=ignore_index
                )
                value = float(loss.detach())
                if math.isfinite(value):
                    scaler.scale(loss / o.accumulate).backward()
                else:
                    finite = False
                    if ctx.enabled:  # a zero-gradient backward keeps DDP's all-reduce in step
                        sum((p * 0).sum() for p in raw_model.parameters() if p.requires_grad).backward()
            step_loss += float(main.detach()) / o.accumulate
            step_total += value / o.accumulate
            step_aux += (float(aux.detach()) if aux is not None else 0.0) / o.accumulate
        if ctx.enabled:
            flag = torch.tensor([0.0 if finite else 1.0], device=device)
            torch.distributed.all_reduce(flag)
            finite = bool(flag.item() == 0)
        if finite:
            scaler.step(optimizer)
            scaler.update()
        else:
            for buf, old in zip(buffers, saved_buffers, strict=True):
                buf.copy_(old)
            if not all_finite():  # diverged: skipping would only repeat this until the next checkpoint
                raise NonFiniteLossError(_diverged_message(iteration + 1, out))
            skips_in_a_row += 1
            if skips_in_a_row >= MAX_SKIPS_IN_A_ROW:  # finite but useless weights: same end
                first = iteration + 2 - skips_in_a_row
                what = (
                    f"the last {skips_in_a_row} steps in a row (from iteration {first}) had a non-finite loss"
                )
                raise NonFiniteLossError(_diverged_message(iteration + 1, out, what, first))
            skipped.append(iteration)
            all_indices = indices
            if ctx.enabled:
                gathered: list[Any] = [None] * ctx.world_size
                torch.distributed.all_gather_object(gathered, indices)
                all_indices = [i for part in gathered for i in part]
            names = _batch_names(train_dataset, all_indices)
            entry = {
                "iter": iteration + 1,
                "event": "nonfinite_loss",
                "indices": all_indices,
                "names": names,
            }
            if config.nonfinite == "abort":
                logger.log(entry)
                raise NonFiniteLossError(
                    f"non-finite loss at iteration {iteration + 1} on samples {names[:8]}; lower "
                    "optim.base_lr, check those images, or set nonfinite: skip to step over such batches"
                )
            logger.log({**entry, "action": "skipped"})
            logger.message(f"iteration {iteration + 1}: non-finite loss, step skipped (samples {names[:8]})")
        iteration += 1
        epoch_step += 1
        run_steps += 1
        bar.update(1)
        if finite:
            skips_in_a_row = 0
            window_losses.append(step_loss)
            window_aux.append(step_aux)
            window_total.append(step_total)
        window_steps += 1

        if iteration % config.output.log_interval == 0 or iteration == max_iter:
            now = time.perf_counter()
            means = [
                sum(v) / len(v) if v else float("nan") for v in (window_losses, window_aux, window_total)
            ]
            loss_mean, aux_mean, total_mean = all_reduce_mean(means, device)
            speed = window_steps * images_per_step / max(now - window_start, 1e-9)
            entry = {
                "iter": iteration,
                "epoch": epoch,
                "loss": loss_mean,
                "aux_loss": aux_mean,
                "total_loss": total_mean,
                "lr": lr,
                "images_per_s": speed,
                "time": time_offset + now - run_start,
            }
            if device.type == "cuda":  # this rank's peak so far: what to size the batch by
                entry["max_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            logger.log(entry)
            bar.set_postfix(loss=f"{loss_mean:.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.1f}")
            window_start, window_losses, window_aux, window_total, window_steps = now, [], [], [], 0

        step_epoch = epoch  # the epoch this iteration belongs to (its log lines say so)
        if epoch_step >= steps_per_epoch:
            epoch, epoch_step = epoch + 1, 0

        pause_start = time.perf_counter()
        interval = config.eval.interval
        # The final validation runs after the final checkpoint and model are written (below).
        if val_dataset is not None and interval > 0 and iteration % interval == 0 and iteration < max_iter:
            validate(iteration, step_epoch)

        ckpt = config.output.checkpoint_interval
        if (ckpt > 0 and iteration % ckpt == 0) or iteration == max_iter:
            if not all_finite():  # every rank holds the same weights, so every rank stops
                raise NonFiniteLossError(_diverged_message(iteration, out))
            if skips_in_a_row and iteration < max_iter:
                # The weights that gave these non-finite losses may have diverged: OUT/last stays at
                # a checkpoint from before the streak, the one to resume from if the run stops.
                logger.message(
                    f"iteration {iteration}: no checkpoint while steps are being skipped (the last "
                    f"{skips_in_a_row} had a non-finite loss)"
                )
            else:
                if ctx.is_main:
                    save_checkpoint(
                        out,
                        raw_model,
                        checkpoint_state(),
                        config_yaml,
                        iteration=iteration,
                        keep_last=config.output.keep_last,
                    )
                barrier(config.dist_timeout_s, f"checkpoint {iteration}")
        pause = time.perf_counter() - pause_start
        paused += pause
        window_start += pause
    del batches
    bar.close()
    elapsed = time.perf_counter() - run_start - paused
    final = out / FINAL_MODEL_NAME
    if ctx.is_main:
        save_model(raw_model, final, extra={"iteration": str(iteration)})
    if val_dataset is not None and validated_at != max_iter:
        # Also on a resume of a finished run whose final validation failed.
        try:
            validate(max_iter, epoch if epoch_step > 0 else max(epoch - 1, 0))
        except DataError as exc:
            raise DataError(
                f"the final validation failed: {exc}; the trained weights are saved ({final}, "
                f"{out}/last); fix the validation data and rerun with --resume to validate them"
            ) from exc
    logger.close()
    barrier(config.dist_timeout_s, "the end of training")
    return TrainResult(
        model_path=final,
        best_miou=best_miou,
        best_path=(out / BEST_NAME) if best_miou is not None else None,
        history=logger.history,
        images_per_s=run_steps * images_per_step / max(elapsed, 1e-9),
        iterations=max_iter,
        skipped_steps=skipped,
        model=raw_model,
        steps_run=run_steps,
    )
