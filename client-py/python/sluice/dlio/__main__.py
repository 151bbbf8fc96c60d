"""``python -m sluice.dlio [hydra overrides]``: DLIO's own entry point
(``dlio_benchmark.main.main``), usable without TensorFlow.

dlio-benchmark 2.0.0 imports its TensorBoard profiler, and with it
TensorFlow, when its main module loads, whatever the workload's framework. A
PyTorch workload needs nothing else of TensorFlow, so when TensorFlow cannot
be imported this entry point puts a stand-in for that one module in place
first: a workload that selects the ``tensorboard`` profiler then fails with
an error that says so. With TensorFlow installed it changes nothing, and
``dlio_benchmark`` itself runs the same workloads.

Run it like ``dlio_benchmark``: alone for one process, or under ``mpirun``.
"""

from __future__ import annotations

import importlib.util
import sys
import types

_PROFILER_MODULE = "dlio_benchmark.profiler.tf_profiler"


class _NoTensorBoardProfiler:
    """Stands in for DLIO's ``TFProfiler`` when TensorFlow is missing."""

    @staticmethod
    def get_instance() -> None:
        raise RuntimeError("the tensorboard profiler needs TensorFlow, which is not installed")


def _stand_in_for_tensorboard_profiler() -> None:
    if importlib.util.find_spec("tensorflow") is not None or _PROFILER_MODULE in sys.modules:
        return
    module = types.ModuleType(_PROFILER_MODULE)
    module.TFProfiler = _NoTensorBoardProfiler  # type: ignore[attr-defined]
    sys.modules[_PROFILER_MODULE] = module


def main() -> None:
    _stand_in_for_tensorboard_profiler()
    from dlio_benchmark.main import main as dlio_main

    dlio_main()


if __name__ == "__main__":
    main()
