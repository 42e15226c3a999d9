"""Joining the processes of a multi-host run (``jax.distributed``), and failing together.

Every process runs the same ``sora-jax train`` command. How they find each other:

- explicitly: ``--coordinator HOST:PORT --num-processes N --process-id I`` (or the environment
  variables ``SORA_JAX_COORDINATOR``, ``SORA_JAX_NUM_PROCESSES``, ``SORA_JAX_PROCESS_ID``), as
  ``launch/local.sh`` does for N local CPU processes;
- automatically, where JAX can read the cluster from its environment: a Cloud TPU VM (its
  metadata server lists the slice's hosts), a GKE or multi-slice job (``TPU_WORKER_HOSTNAMES``,
  ``MEGASCALE_COORDINATOR_ADDRESS``) and SLURM (``SLURM_NTASKS``).

A process that fails must not leave the others waiting forever in a collective: it exits at once
(without the orderly shutdown barrier, which would wait for them) and the others learn of it from
the coordination service within the heartbeat timeout, and exit with an error naming it.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import traceback
from pathlib import Path

import jax

from sora_jax.errors import ConfigError

log = logging.getLogger("sora_jax")

ENV_COORDINATOR = "SORA_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "SORA_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "SORA_JAX_PROCESS_ID"
ENV_HEARTBEAT = "SORA_JAX_HEARTBEAT_TIMEOUT"  # Seconds before a silent process counts as failed.
# Words of runtime errors that mean a peer went away mid-collective, not a fault of this process.
_PEER_LOST = ("gloo", "connection reset", "connection refused", "heartbeat", "unavailable", "peer")


def _int_from(value: int | None, env: str) -> int | None:
    if value is not None:
        return value
    raw = os.environ.get(env)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{env}={raw!r} is not an integer") from None


def _on_cloud_tpu_vm() -> bool:
    """TPU chips are attached (Google's PCI vendor id): JAX reads the slice's hosts from the VM's
    metadata server, on a one-host slice as on a pod."""
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            if Path(vendor).read_text().strip() == "0x1ae0":
                return True
        except OSError:
            continue
    return False


def cluster_detected() -> bool:
    """The environment describes a multi-process job that JAX can join by itself."""
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return (
        "," in hosts
        or bool(os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or _on_cloud_tpu_vm()
    )


def initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Join the run's other processes, if there are any; a no-op for a single process.

    Raises:
        ConfigError: an explicit setup is incomplete or inconsistent.
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR)
    num_processes = _int_from(num_processes, ENV_NUM_PROCESSES)
    process_id = _int_from(process_id, ENV_PROCESS_ID)
    heartbeat = _int_from(None, ENV_HEARTBEAT) or 100
    if coordinator is None:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise ConfigError(f"--num-processes/--process-id need --coordinator (or {ENV_COORDINATOR})")
        if cluster_detected():
            jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat)
        return
    if num_processes is None or process_id is None:
        raise ConfigError("--coordinator needs --num-processes and --process-id (or their variables)")
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"--process-id {process_id} is not in [0, {num_processes})")
    if num_processes == 1:
        return
    # CPU devices of different processes talk over gloo (TCP); accelerators use their own links.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=heartbeat,
    )
    log.info("process %d of %d joined %s", process_id, num_processes, coordinator)


def exit_on_failure(error: BaseException) -> None:
    """In a multi-process run, report ``error`` and end this process now.

    A normal exit would run JAX's shutdown barrier, which waits for the other processes; they may
    be waiting for this one inside a collective, so nobody would ever exit.
    """
    if jax.process_count() == 1:
        return
    me = f"process {jax.process_index()} of {jax.process_count()}"
    text = str(error).lower()
    if isinstance(error, jax.errors.JaxRuntimeError) and any(w in text for w in _PEER_LOST):
        reason = f"{me} lost contact with another process, which has probably failed (see its log)"
    else:
        reason = f"{me} failed ({type(error).__name__}: {error})"
    print(
        "".join(traceback.format_exception(error)) + f"sora-jax: {reason}; the run stops",
        file=sys.stderr,
        flush=True,
    )
    logging.shutdown()
    os._exit(1)
