"""Test helper: ``python kill_at_epoch.py K ARGS...`` runs ``graphscale train ARGS`` and SIGKILLs its own
process when epoch ``K`` starts, i.e. after epoch ``K - 1``'s checkpoint and before anything of epoch ``K``
is written: a kill -9 at a known point instead of a race with the clock."""
import os
import signal
import sys

from graphscale.train import trainer

KILL_AT = int(sys.argv[1])
_train_epoch = trainer.Trainer._train_epoch


def _dies_at(self, epoch):
    if epoch == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    return _train_epoch(self, epoch)


trainer.Trainer._train_epoch = _dies_at

if __name__ == "__main__":
    from graphscale.cli import main
    sys.exit(main(["train", *sys.argv[2:]]))
