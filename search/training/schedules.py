"""Learning-rate schedules as pure functions of the optimizer step.

`multiplier(schedule, steps_per_epoch, total_steps)` returns f(step) -> factor of the base
learning rate, written with `keras.ops` so the same code runs inside a jitted JAX step,
a TensorFlow graph or torch. `KerasSchedule` wraps it for Keras optimizers.
"""

from __future__ import annotations


def multiplier(schedule, learning_rate: float, steps_per_epoch: int, total_steps: int):
    """f(step) -> learning rate at that step (float32 tensor) for a `config.Schedule`."""
    from keras import ops

    warmup = schedule.warmup_epochs * steps_per_epoch
    total = float(max(total_steps, 1))

    def after_warmup(step):
        if schedule.kind == "constant":
            return ops.ones_like(step)
        if schedule.kind == "step":
            epoch = step / steps_per_epoch
            factor = ops.ones_like(step)
            for drop in schedule.drop_epochs:
                factor = ops.where(epoch >= drop, factor * schedule.drop_factor, factor)
            return factor
        if schedule.kind == "cosine":
            progress = ops.clip((step - warmup) / max(total - warmup, 1.0), 0.0, 1.0)
            cosine = 0.5 * (1.0 + ops.cos(3.141592653589793 * progress))
            return schedule.final_fraction + (1.0 - schedule.final_fraction) * cosine
        if schedule.kind == "inverse_time":
            # lr = c1 / (step + c2); by default it starts at learning_rate and halves
            # after one epoch.
            c2 = schedule.c2 if schedule.c2 is not None else float(steps_per_epoch)
            c1 = schedule.c1 if schedule.c1 is not None else learning_rate * c2
            return (c1 / (step + c2)) / learning_rate
        if schedule.kind == "onecycle":
            # airbench's `triangle`: linear from start_fraction at step 0 up to 1 at step
            # int(peak_fraction * total), then linear down to final_fraction at step total.
            peak = float(int(schedule.peak_fraction * total))
            up = schedule.start_fraction + (1.0 - schedule.start_fraction) * step / max(peak, 1.0)
            down = 1.0 + (schedule.final_fraction - 1.0) * (step - peak) / max(total - peak, 1.0)
            return ops.where(step < peak, up, down)
        raise ValueError(f"unknown schedule {schedule.kind!r}")

    def rate(step):
        step = ops.cast(step, "float32")
        factor = after_warmup(step)
        if warmup > 0:
            factor = factor * ops.minimum(1.0, (step + 1.0) / warmup)
        return learning_rate * factor

    return rate


def keras_schedule(schedule, learning_rate: float, steps_per_epoch: int, total_steps: int):
    """A `keras.optimizers.schedules.LearningRateSchedule` for the optimizer; a constant
    schedule without warm-up is a plain float (what Keras handles fastest)."""
    import keras

    if schedule.kind == "constant" and schedule.warmup_epochs == 0:
        return learning_rate
    rate = multiplier(schedule, learning_rate, steps_per_epoch, total_steps)

    class Schedule(keras.optimizers.schedules.LearningRateSchedule):
        # Saved models are clean clones without the optimizer, so this class never needs
        # to be deserialised; get_config only records what it was.
        def __call__(self, step):
            return rate(step)

        def get_config(self):
            return {"kind": schedule.kind, "learning_rate": learning_rate}

    return Schedule()
