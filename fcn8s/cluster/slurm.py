"""Render an ``sbatch`` script: ``srun`` starts one ``fcn8s.train`` task per device.

The script exports ``HCCL_CONNECT_TIMEOUT`` / ``HCCL_EXEC_TIMEOUT`` from the config's ``dist``
section (a value already in the submit environment wins, as it does in ``fcn8s.train``).
It is requeueable (``--requeue``, ``--open-mode=append``) and every attempt trains with
``--resume auto``, so a requeued job continues from its newest checkpoint.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from typing import Optional, Tuple

from fcn8s.cluster.spec import JobSpec
from fcn8s.cluster.templating import fill
from fcn8s.errors import UserError

FILENAME = "fcn8s.sbatch"
# Written by the template itself; the same option given again with --sbatch-arg is dropped.
BUILTIN_DIRECTIVES = ("--requeue", "--open-mode=append")


@dataclass(frozen=True)
class SlurmOptions:
    """Extra ``#SBATCH`` settings."""

    log: str = "%x-%j.out"
    partition: Optional[str] = None
    time: Optional[str] = None
    account: Optional[str] = None
    extra: Tuple[str, ...] = ()

    def directives(self) -> Tuple[str, ...]:
        """Additional ``--key=value`` sbatch options, checked."""
        named = tuple(f"--{key}={value}" for key, value in
                      (("partition", self.partition), ("time", self.time), ("account", self.account)) if value)
        for option in (*named, *self.extra, f"--output={self.log}"):
            if not option.startswith("-") or any(char.isspace() for char in option):
                raise UserError(f"sbatch option {option!r}: expected one '--key=value' word without spaces")
        return named + tuple(option for option in self.extra if option not in BUILTIN_DIRECTIVES)


def render(spec: JobSpec, options: SlurmOptions, command: str) -> str:
    """The sbatch script text for ``spec``."""
    # The script passes OUTPUT_DIR and --resume itself (auto unless rendered with --resume PATH).
    train_args = replace(spec, resume=None).train_args(keep_output_dir=False)
    return fill("slurm.sbatch", {
        "COMMAND": command, "SCRIPT": FILENAME, "JOB_NAME": spec.job_name, "NODES": str(spec.nodes),
        "TASKS": str(spec.devices_per_node), "LOG": options.log, "OUTPUT_DIR": shlex.quote(spec.output_dir()),
        "EXTRA": "".join(f"#SBATCH {option}\n" for option in options.directives()),
        "TRAIN_ARGS": " ".join(shlex.quote(arg) for arg in train_args), "RESUME": shlex.quote(spec.resume or "auto"),
        **spec.hccl_env(),
    })
