"""What the user asked to run on a cluster (size, image, config, overrides), checked before rendering."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from fcn8s.config import load_config, parse_override
from fcn8s.errors import UserError

# Kubernetes object names, namespaces and label values: a DNS-1123 label (RFC 1123), 1-63 lowercase
# letters, digits and '-', starting and ending with a letter or digit.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# The job name also names its pods, "<job>-worker-<index>": 52 characters leave those (and the pods'
# hostnames) within 63 for up to 1000 pods. Slurm job names follow the same rule here.
JOB_NAME_MAX = 52
OUTPUT_DIR_KEY = ["run", "output_dir"]


@dataclass(frozen=True)
class JobSpec:
    """One data-parallel training job: ``nodes`` x ``devices_per_node`` ranks."""

    nodes: int
    devices_per_node: int
    config: str
    overrides: Tuple[str, ...] = ()
    job_name: str = "fcn8s"
    image: Optional[str] = None
    resume: Optional[str] = None

    @property
    def world_size(self) -> int:
        return self.nodes * self.devices_per_node

    def train_args(self, keep_output_dir: bool = True) -> List[str]:
        """Arguments of ``python -m fcn8s.train`` for every rank (optionally without run.output_dir overrides)."""
        args = ["--config", self.config]
        for override in self.overrides:
            if keep_output_dir or parse_override(override)[0] != OUTPUT_DIR_KEY:
                args += ["--set", override]
        if self.resume:
            args += ["--resume", self.resume]
        return args

    def hccl_env(self) -> Dict[str, str]:
        """``HCCL_CONNECT_TIMEOUT`` / ``HCCL_EXEC_TIMEOUT`` (seconds) from the resolved config's ``dist`` section.

        The job exports them, so HCCL and the training process (which logs them) use the same values.
        """
        dist = load_config(self.config, self.overrides).dist
        return {"HCCL_CONNECT_TIMEOUT": str(dist.hccl_connect_timeout),
                "HCCL_EXEC_TIMEOUT": str(dist.hccl_exec_timeout)}

    def output_dir(self) -> str:
        """``run.output_dir`` as written in the config or overrides (relative to the job's working dir)."""
        return load_config(self.config, self.overrides, resolve=False).run.output_dir


def check_spec(spec: JobSpec) -> JobSpec:
    """Raise UserError naming the first problem; the config and overrides are loaded and validated."""
    for name, value in (("--nodes", spec.nodes), ("--devices-per-node", spec.devices_per_node)):
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    if not DNS_LABEL.fullmatch(spec.job_name) or len(spec.job_name) > JOB_NAME_MAX:
        raise UserError(f"--job-name {spec.job_name!r}: use 1-{JOB_NAME_MAX} lowercase letters, digits and '-', "
                        "starting and ending with a letter or digit")
    load_config(spec.config, spec.overrides)
    return spec


def command_line(argv: Sequence[str]) -> str:
    """The render command that reproduces a file, without ``--out`` (for the generated header)."""
    kept: List[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            kept.append(arg)
    return shlex.join(["python", "-m", "fcn8s.cluster", *kept])
