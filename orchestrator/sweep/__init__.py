"""The sweep: the only layer that joins Ray (``execution``) and MLflow (``tracking``).

The driver (``driver.run`` / ``driver.resume``) runs three stages over one ``Context``:
``search`` (the Tune run over ``sweep.space``), ``confirm`` (the top configurations with
fresh seeds) and ``champion`` (refit, test once, register). Each Tune run writes into a
trial ``Book`` (the ledger and the MLflow runs, plain Python), which Tune reaches through
the thin callbacks in ``hooks``; ``tuner`` builds the Tune runs; ``train`` is
``orchestrator train``. The state file that makes a resume possible is
``orchestrator.core.state``.
"""

import sys
import types
from typing import Any

from orchestrator.sweep import hooks
from orchestrator.sweep.driver import SweepSummary, resume, run
from orchestrator.sweep.train import TrainSummary, train_run

# The names a sweep started by 0.1 pickled its Tune callbacks under (in tuner.pkl): kept, so
# `orchestrator resume` still restores such a sweep with this driver's live trial book.
_live_callback = hooks.live
_Watchdog = hooks.Watchdog

__all__ = ["SweepSummary", "TrainSummary", "resume", "run", "train_run"]


class _Callable(types.ModuleType):
    """This package is also the API's ``orchestrator.sweep(config, overrides)``: the name is
    one, whichever was imported first."""

    def __call__(self, *args: Any, **kwargs: Any) -> SweepSummary:
        from orchestrator import api

        return api.sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _Callable
