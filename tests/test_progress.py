"""progress.png: per-epoch loss means and validation Dice, written after every validation whatever the order of the
trainer's handlers."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events

from diffmed_monai.engines import ProgressPlot


def test_progress_plot_records_each_epoch_and_writes_a_png(tmp_path):
    trainer = Engine(lambda e, b: {"loss": torch.tensor(3.0 / e.state.epoch), "loss_kd": torch.tensor(2.0)})
    validator = Engine(lambda e, b: None)

    def metrics(engine):
        engine.state.metrics = {"val_mean_dice": 0.2 * trainer.state.epoch, "loss_val": 1.0}

    validator.add_event_handler(Events.COMPLETED, metrics)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(every=2), lambda e: validator.run([0]))  # before the plot's
    plot = ProgressPlot(str(tmp_path / "out" / "progress.png"), validator)
    plot.attach(trainer)
    trainer.run([0, 1, 2], max_epochs=4)
    assert plot.losses["loss"] == [(1, 3.0), (2, 1.5), (3, 1.0), (4, 0.75)]
    assert plot.dice["val_mean_dice"] == [(2, 0.4), (4, 0.8)] and "loss_val" not in plot.dice
    png = tmp_path / "out" / "progress.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    assert not [p for p in png.parent.iterdir() if p.name.endswith(".tmp")]


def test_dice_curves_take_their_class_colour_from_the_case_pictures():
    from diffmed_monai.engines import ProgressPlot
    from diffmed_monai.transforms.pictures import class_colour

    plot = ProgressPlot("unused.png", validator=None, class_names=["background", "ncr", "ed", "et"])
    assert [plot.colour_of(f"dice_{n}") for n in ("ncr", "ed", "et")] == [class_colour(i) for i in (1, 2, 3)]
    assert plot.colour_of("val_mean_dice") is None and plot.colour_of("dice_tc") is None  # greys, dashed
