"""Training with the paper's recipe: set-up, one epoch, the end of an epoch, and the epoch loop.

    run = setup(cfg)            # data, network and where it lives, optimizer, the step; or a resume
    fit(run)                    # for each epoch: train_one_epoch, end_epoch (validate, log, drop, save)

`train(TrainConfig(...))` does both; it is what `alexnet train` runs. The same program runs on one
device and under torchrun (`alexnet.parallel.placement` says where the network lives). SIGTERM or
SIGINT at any moment saves a checkpoint and returns within 11 steps (the loop's next check,
`alexnet.checks`, answered a step later) or an evaluation batch; `--resume`
continues exactly, from a state that records what of the epoch was done (`batch_in_epoch`, up to all
of it: then only the end-of-epoch work remains) and the sums of the epoch so far.
"""

from __future__ import annotations

import json
import math
import time


from alexnet.checks import ask
from alexnet.config import TrainConfig
from alexnet.data.waits import data_bound_hint
from alexnet.errors import Interrupted, TrainingDiverged
from alexnet.optim import drop_learning_rate
from alexnet.runtime import StopSignals
from alexnet.run import Run, setup, snapshot

__all__ = ["TrainConfig", "train", "setup", "fit", "train_one_epoch", "end_epoch", "Run"]


def train(cfg: TrainConfig, log=print, given: set[str] | None = None) -> dict:
    """Train; returns the final metrics. Writes RUN/config.json, RUN/metrics.jsonl, checkpoints.

    `given`: the options the user set (the CLI passes its explicit flags); on a resume those that
    differ from the run's are applied or refused (alexnet.config.merge_for_resume). None: every field
    that differs from its default counts as given."""
    with StopSignals() as stop:
        run = setup(cfg, log, stop, given)
        try:
            return fit(run)
        finally:
            run.close()


class _Stall:
    """A run that is not learning stops with a message saying what to try: its loss stays at
    ln(classes), the uniform guess, for `window` checked steps (the paper's unit biases do this in some
    frameworks), or its validation error stays at chance for `epochs` epochs and at least
    `MIN_FLAT_STEPS` steps (a collapse the training loss can hide; a healthy run leaves chance within a
    few hundred steps, so short epochs early in a run do not count alone)."""

    MIN_FLAT_STEPS = 1000

    def __init__(self, classes: int, window: int, epochs: int, tolerance: float = 0.02):
        self.chance_loss, self.chance_error = math.log(classes), 1.0 - 1.0 / classes
        self.window, self.epochs, self.tolerance = window, epochs, tolerance
        self.steps = self.flat_epochs = self.flat_steps = 0

    def step(self, loss: float) -> bool:
        near = abs(loss - self.chance_loss) < self.tolerance * self.chance_loss
        self.steps = self.steps + 1 if near else 0
        return self.window > 0 and self.steps >= self.window

    def epoch(self, val_error: float, steps: int, images: int) -> bool:
        # at chance: no better than guessing, beyond three standard errors of a guess on `images`
        spread = 3 * math.sqrt(self.chance_error * (1 - self.chance_error) / max(images, 1))
        flat = val_error >= self.chance_error - max(spread, self.tolerance * self.chance_error)
        self.flat_epochs = self.flat_epochs + 1 if flat else 0
        self.flat_steps = self.flat_steps + steps if flat else 0
        return 0 < self.epochs <= self.flat_epochs and self.flat_steps >= self.MIN_FLAT_STEPS


def _check_loss(run: Run, loss: float, stall: _Stall, epoch: int, step: int | None = None) -> None:
    """``step``: the step the loss is from (default: the run's last)."""
    step = run.global_step if step is None else step
    if not math.isfinite(loss):
        raise TrainingDiverged(f"loss is {loss} at step {step} (epoch {epoch + 1}); {run.kept()}. "
                               "Lower --lr, or check the data.")
    if stall.step(loss):
        raise TrainingDiverged(
            f"loss has stayed at ln({len(run.classes)}) = {stall.chance_loss:.3f} (chance) for {stall.steps} "
            f"checked steps up to step {step}: the network is not learning. With the paper's unit "
            f"biases this is a known failure mode: try --unit-bias 0.1 or a lower --lr. {run.kept()}.")


def train_one_epoch(run: Run, epoch: int, stall: _Stall) -> bool:
    """Train `epoch` from `run.batch` on; True if it ran to its end, False if a signal stopped it
    (after saving). Checkpoints within the epoch every --checkpoint-steps / --checkpoint-minutes."""
    cfg, step, stats = run.cfg, run.step, run.epoch_stats
    loader = run.train_feeder.epoch(epoch, run.batch)
    run.placement.net.train()
    step.reset_sums(stats["loss_sum"], stats["miss_sum"])
    bar = run.progress_bar(loader.batches_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", run.batch)
    t0, done = time.perf_counter() - stats["seconds"], False
    # How often the host reads the loss (alexnet.checks: answered after the next step is launched):
    # every step for a short stall window, often enough for the step checkpoints, otherwise every 10.
    sync_every = 1 if 0 < stall.window < 100 else min(10, cfg.checkpoint_steps or 10)
    run.epoch = epoch
    check = None                                          # asked after the last step, answered after this one
    try:
        for images, labels in loader:
            warming, t_step = run.warm_steps > 0, time.perf_counter()
            loss = step(images, labels)
            if warming:                                   # compilation and capture: timed apart
                run.sync()
                run.warm_steps -= 1
                spent = time.perf_counter() - t_step
                stats["warmup_seconds"] += spent
                stats["warmup_images"] += run.global_batch
                t0 += spent
            run.global_step += 1
            run.batch += 1
            stats["batches"] += 1
            stats["images"] += run.global_batch
            if bar is not None:
                bar.update(1)
            if check is not None and _act_on(run, check, stall, epoch, bar, t0):
                return False
            check = None
            if run.global_step % sync_every == 0:        # the only host-device waits of the loop
                check = ask(run, loss)
                if run.checkpoint_due():                  # a checkpoint by step count: at this very step
                    stopped, check = _act_on(run, check, stall, epoch, bar, t0), None
                    if stopped:
                        return False
            if cfg.max_steps and run.global_step >= cfg.max_steps:
                break
        if check is not None and _act_on(run, check, stall, epoch, bar, t0):
            return False
        done = run.batch >= loader.batches_per_epoch
    finally:
        if bar is not None:
            bar.close()
    stats.update(seconds=time.perf_counter() - t0, **run.sums())
    if stats["batches"]:                          # the steps since the last check, as one mean
        _check_loss(run, run.reduce(stats["loss_sum"] / stats["batches"]), stall, epoch)
    return done or bool(cfg.max_steps and run.global_step >= cfg.max_steps)


def _act_on(run: Run, check, stall: _Stall, epoch: int, bar, t0: float) -> bool:
    """Answer a check (alexnet.checks): the loss checked and shown, a checkpoint saved if one is due or a
    stop was asked for; True if the run must stop."""
    loss_value, stop_now, time_due = check.answer()
    _check_loss(run, loss_value, stall, epoch, check.step)
    stats = run.epoch_stats
    if bar is not None:
        rate = (stats["images"] - stats["warmup_images"]) / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix_str(f"loss {loss_value:.3f} {rate:,.0f} img/s lr {run.optimizer.param_groups[0]['lr']:g}")
    if stop_now or time_due or run.checkpoint_due():
        stats.update(seconds=time.perf_counter() - t0, **run.sums())
        run.save(epoch)
    return stop_now


def _waited_text(waited: dict[str, float] | None) -> str:
    """The epoch line's account of the waits for batches: '' if under 0.05 s (or not known)."""
    if not waited or sum(waited.values()) < 0.05:
        return ""
    parts = ", ".join(f"{k} {v:.1f}" for k, v in waited.items() if v >= 0.05)
    return f"; waited {sum(waited.values()):.1f} s for batches ({parts})"


def end_epoch(run: Run, epoch: int, stall: _Stall) -> dict:
    """Validate, log the metrics line, drop the learning rate if due, save the epoch's checkpoint."""
    cfg, stats = run.cfg, run.epoch_stats
    val = run.evaluate(run.val_split, cfg.eval_crops, f"validate epoch {epoch + 1}")
    complete = run.batch >= run.batches_per_epoch
    stats_batches = stats["batches"]
    n = max(stats_batches, 1)
    train_loss, train_err = run.reduce(stats["loss_sum"] / n), run.reduce(stats["miss_sum"] / n)
    seconds = stats["seconds"]
    metrics = {"epoch": epoch + 1, "step": run.global_step, "lr": run.optimizer.param_groups[0]["lr"],
               "train_loss": train_loss, "train_top1_error": train_err, "val_top1_error": val["top1_error"],
               "val_top5_error": val["top5_error"], "val_images": val["images"], "seconds": seconds,
               "images_per_second": (stats["images"] - stats["warmup_images"]) / seconds if seconds > 0 else 0.0,
               "warmup_seconds": stats["warmup_seconds"], "complete": complete}
    share = run.train_feeder.gpu_share(since_epoch=True)
    if share is not None:
        metrics["gpu_decoded_share"] = share  # of the batches filled since this epoch (or its resumed part) began
    waited = run.train_feeder.waited()  # this process's waits for its batches (rank 0's under DDP)
    if waited is not None:
        metrics["data_wait_seconds"] = {k: round(v, 3) for k, v in waited.items()}
    best = val["top1_error"] < run.best_error
    run.best_error = min(run.best_error, val["top1_error"])
    if complete and run.schedule.should_drop(epoch + 1, val["top1_error"]):
        run.schedule.drops += 1
        run.log(f"learning rate divided by 10 -> {drop_learning_rate(run.optimizer, 10.0):g} "
                f"(drop {run.schedule.drops})")
    if run.dist.is_main:
        with open(run.run_dir / "metrics.jsonl", "a") as f:       # before the checkpoint: see resume
            f.write(json.dumps(metrics) + "\n")
    if complete:
        run.epoch, run.batch = epoch + 1, 0
        run.reset_epoch_stats()
    state = snapshot(run, completed_epochs=epoch + 1 if complete else epoch)
    if state is not None:
        run.keeper.save_epoch(state, epoch + 1, best) if complete else run.keeper.save(state, best)
    run.last_save = time.monotonic()
    warm = (f" (+{metrics['warmup_seconds']:.1f} s for the first {stats['warmup_images'] // run.global_batch} steps: "
            "compilation and warm-up, not counted)") if metrics["warmup_seconds"] else ""
    run.log(f"epoch {epoch + 1}: train loss {train_loss:.4f} top-1 err {train_err:.4f} | val top-1 err "
            f"{val['top1_error']:.4f} top-5 err {val['top5_error']:.4f} | {metrics['images_per_second']:,.0f} img/s, "
            f"{seconds:.1f} s{warm}" + ("" if share is None else f", {share:.0%} of batches decoded by GPU workers")
            + _waited_text(waited))
    if waited and complete and epoch == 1:  # once a run, for its first steady epoch (the first starts the loader)
        feeder = run.train_feeder
        hint = data_bound_hint(waited, seconds, feeder.workers, feeder.gpu_workers, feeder.split.encoding == "jpeg")
        if hint:
            run.log(hint)
    if stall.epoch(val["top1_error"], stats_batches, val["images"]):
        raise TrainingDiverged(f"validation error has stayed at chance ({stall.chance_error:.3f}) for "
                               f"{stall.flat_epochs} epochs ({stall.flat_steps} steps): the network is not learning. "
                               f"Try --unit-bias 0.1 or a lower --lr. {run.kept()}.")
    return metrics


def fit(run: Run) -> dict:
    """The epoch loop, then the test split once. Returns the final metrics and test results."""
    cfg = run.cfg
    stall = _Stall(len(run.classes), cfg.stall_window, cfg.stall_epochs)
    metrics, stopped_by = {}, None
    for epoch in range(run.epoch, cfg.epochs):
        try:
            if not train_one_epoch(run, epoch, stall):
                stopped_by = run.stop.signal or "a signal to another process"
                break
            metrics = end_epoch(run, epoch, stall)
        except Interrupted:                     # a signal during validation: the epoch's training is kept
            stopped_by = run.stop.signal or "a signal"
            run.save(epoch)
            break
        if cfg.max_steps and run.global_step >= cfg.max_steps:
            break
    result = {"run": str(run.run_dir), "steps": run.global_step, "last": metrics, "stopped_by": stopped_by}
    if stopped_by:
        run.log(f"{stopped_by}: saved {run.keeper.last}; continue with --resume")
        return result
    try:
        result.update(test(run))
    except Interrupted:
        result["stopped_by"] = run.stop.signal
        run.log(f"{run.stop.signal}: test phase stopped; the trained network is in {run.keeper.last}")
        return result
    run.log(f"done: {run.run_dir}/ holds last.pt, best.pt, metrics.jsonl, config.json"
            + (", test.json" if run.test_split is not None else "")
            + f". Evaluate with: alexnet eval --checkpoint {run.keeper.last} --data DIR")
    return result


def test(run: Run) -> dict:
    """The test split, once, with each of --test-crops; written to RUN/test.json."""
    if run.test_split is None:
        return {}
    result = {}
    for crops in run.cfg.test_crops:
        t = run.evaluate(run.test_split, crops, f"test {run.test_name}, {crops} crop(s)")
        result[f"test_{crops}crop"] = t
        run.log(f"test ({run.test_name}, {crops} crop{'s' if crops > 1 else ''}): top-1 error {t['top1_error']:.4f}, "
                f"top-5 error {t['top5_error']:.4f} on {t['images']:,} images")
    if run.dist.is_main:
        (run.run_dir / "test.json").write_text(json.dumps(result | {"run": str(run.run_dir),
                                                                    "steps": run.global_step}, indent=2))
    return result
