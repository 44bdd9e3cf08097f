"""Training: typed config, run lifecycle, trainers (docs/architecture.md).

``graphscale.train.Trainer`` is the standard trainer (:class:`graphscale.train.trainer.Trainer`), imported
on first use so that ``graphscale.train.config`` stays light to import.
"""


def __getattr__(name: str):
    if name == "Trainer":
        from graphscale.train.trainer import Trainer
        return Trainer
    raise AttributeError(f"module 'graphscale.train' has no attribute {name!r}")
