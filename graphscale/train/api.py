"""``train(cfg)``: the one entry point that picks the trainer for ``train.mode``.

``standard`` -> :class:`graphscale.train.trainer.Trainer` (end-to-end, any sampler and model);
``layerwise`` -> :class:`graphscale.train.layerwise_trainer.LayerwiseTrainer` (L-GCN / L2-GCN). Both run
on :mod:`graphscale.train.run`'s lifecycle and write the same files.
"""
from __future__ import annotations

from graphscale.train.build import check_sampler_config
from graphscale.train.config import Config
from graphscale.train.layerwise import check_layerwise_config
from graphscale.train.partitioned import resolve_store_config
from graphscale.train.run import check_common
from graphscale.train.schema import check_used_keys


def check(cfg: Config) -> None:
    """Every check that needs no data, no process group and no files: ranges, unused keys, mode options."""
    resolve_store_config(cfg)  # data.partitions: reads the store's meta.json, fills and checks the config
    check_common(cfg)
    check_used_keys(cfg)
    if cfg.train.mode == "layerwise":
        check_layerwise_config(cfg)
    else:
        check_sampler_config(cfg)


def train(cfg: Config, resume: bool = False) -> dict:
    """Train from a resolved config and return the results dict (also written to ``results.json``)."""
    resolve_store_config(cfg)
    if cfg.train.mode == "layerwise":
        from graphscale.train.layerwise_trainer import LayerwiseTrainer
        return LayerwiseTrainer(cfg, resume=resume).run()
    from graphscale.train.trainer import Trainer
    return Trainer(cfg, resume=resume).run()
