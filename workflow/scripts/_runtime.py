"""Shared start-up of the rule scripts: import path, logging to the rule's log, threads, device."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def setup_logging(smk) -> logging.Logger:
    """Send log records (and uncaught errors) to the rule's ``log:`` file."""
    logfile = smk.log[0] if smk.log else None
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(logfile, mode="a"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    log = logging.getLogger(f"sparseflows.rule.{smk.rule}")

    def excepthook(kind, value, tb):
        log.error("rule %s failed", smk.rule, exc_info=(kind, value, tb))

    sys.excepthook = excepthook
    log.info("rule %s, wildcards %s", smk.rule, dict(smk.wildcards.items()))
    return log


@contextlib.contextmanager
def torch_job(smk):
    """Logging, ``threads:`` torch threads, subnormals flushed to zero and an exclusive device
    for a torch rule."""
    from pipeline_lib.devices import acquire_device, flush_denormals, set_torch_threads

    log = setup_logging(smk)
    # before any torch work: the flush is per thread, inherited by threads created later
    flushed = flush_denormals()
    set_torch_threads(smk.threads)
    with acquire_device(smk.params.get("device", "auto")) as lease:
        log.info(
            "device %s, %d thread(s), subnormals flushed to zero: %s",
            lease.device,
            smk.threads,
            "yes" if flushed else "no (not supported by this CPU)",
        )
        yield log, lease.device
