"""``python -m fcn8s.cluster render``: write a scheduler job for a training config (see --help)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn, Optional, Sequence

from fcn8s.cluster import kube, slurm
from fcn8s.cluster.spec import JobSpec, check_spec, command_line
from fcn8s.errors import EXIT_USER_ERROR, UserError, run_cli

RENDER_HELP = """\
Render a cluster job that trains with CONFIG (plus --set overrides) on NODES x DEVICES ranks.

  volcano    volcano-job.yaml: rank-table ConfigMap + batch.volcano.sh/v1alpha1 Job (Ascend device plugin)
  ascendjob  ascendjob.yaml:   mindxdl.gitee.com/v1 AscendJob (MindX DL Ascend Operator, MindSpore)
  slurm      fcn8s.sbatch:     sbatch script, srun one task per device (NPU or CPU)

Paths in CONFIG and the overrides are taken relative to the job's working directory (the
image's /work, or the Slurm submit dir). Render from the repository root. Guide: docs/cluster.md.

Every job exports HCCL_CONNECT_TIMEOUT and HCCL_EXEC_TIMEOUT from the resolved config
(dist.hccl_connect_timeout, default 600 s; dist.hccl_exec_timeout, default 1836 s): change them
with --set dist.hccl_connect_timeout=1800. Pods of volcano and ascendjob jobs that hold NPUs get
a required pod anti-affinity (at most one per node, topologyKey kubernetes.io/hostname) unless
--allow-shared-nodes.

examples:
  python -m fcn8s.cluster render --scheduler volcano --nodes 2 --devices-per-node 8 \\
      --image registry.example.com/fcn8s:ascend --config configs/voc_fcn8s.yaml \\
      --volume fcn8s-data:/data --set data.mindrecord_dir=/data/voc_mr --set run.output_dir=/data/runs/voc
  python -m fcn8s.cluster render --scheduler slurm --nodes 1 --devices-per-node 2 \\
      --config configs/cpu_smoke.yaml --partition cpu --time 00:30:00 --out jobs/
"""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one ``error: ...`` line (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m fcn8s.cluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="render", parser_class=_Parser)
    render = commands.add_parser("render", help=RENDER_HELP.splitlines()[0], description=RENDER_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    job = render.add_argument_group("job")
    job.add_argument("--scheduler", required=True, choices=("volcano", "ascendjob", "slurm"))
    job.add_argument("--nodes", type=int, required=True, metavar="N", help="number of nodes (pods / Slurm nodes)")
    job.add_argument("--devices-per-node", type=int, required=True, metavar="D",
                     help="ranks per node: NPUs per pod, or Slurm tasks per node")
    job.add_argument("--config", required=True, metavar="YAML", help="training config, e.g. configs/voc_fcn8s.yaml")
    job.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="config override passed to every rank (repeatable; validated now)")
    job.add_argument("--image", metavar="IMG", help="container image (required for volcano and ascendjob)")
    job.add_argument("--job-name", default="fcn8s", metavar="NAME", help="job name (default %(default)s)")
    job.add_argument("--resume", metavar="auto|PATH", help="pass --resume to fcn8s.train (auto: latest checkpoint "
                                                            "in run.output_dir; use for requeued/restarted jobs)")
    job.add_argument("--out", default=".", metavar="DIR", help="directory to write the job file into (default .)")
    pods = render.add_argument_group("volcano and ascendjob")
    pods.add_argument("--namespace", default="default", help="Kubernetes namespace (default %(default)s)")
    pods.add_argument("--queue", default="default", help="Volcano queue (default %(default)s)")
    pods.add_argument("--volume", dest="volumes", action="append", default=[], metavar="CLAIM:/PATH",
                      help="mount a PersistentVolumeClaim in every pod, e.g. fcn8s-data:/data (repeatable); "
                           "keep data.mindrecord_dir and run.output_dir on one")
    pods.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE",
                      help="pod nodeSelector entry, e.g. accelerator-type=module (repeatable)")
    pods.add_argument("--workdir", default="/work", metavar="DIR",
                      help="repository inside the image (default %(default)s, as docker/Dockerfile.ascend)")
    pods.add_argument("--max-retry", type=int, default=3, metavar="N",
                      help="job restarts after eviction/preemption (default %(default)s)")
    pods.add_argument("--allow-shared-nodes", action="store_true",
                      help="let several NPU pods of the job share a node (default: a required pod anti-affinity "
                           "puts at most one per node, since hccl-controller keys the rank table by node)")
    batch = render.add_argument_group("slurm")
    batch.add_argument("--partition", help="#SBATCH --partition")
    batch.add_argument("--time", help="#SBATCH --time limit, e.g. 04:00:00")
    batch.add_argument("--account", help="#SBATCH --account")
    batch.add_argument("--sbatch-arg", dest="sbatch_args", action="append", default=[], metavar="--KEY=VALUE",
                       help="any other sbatch option, written with '=': --sbatch-arg=--gres=npu:8 (repeatable)")
    batch.add_argument("--log", default=slurm.SlurmOptions.log, metavar="PATTERN",
                       help="job output file (default %(default)s: job name and id, in the submit dir)")
    return parser


def render(args: argparse.Namespace, argv: Sequence[str]) -> str:
    """Write the job file for ``args`` into ``args.out``; returns its path."""
    spec = check_spec(JobSpec(nodes=args.nodes, devices_per_node=args.devices_per_node, config=args.config,
                              overrides=tuple(args.overrides), job_name=args.job_name, image=args.image,
                              resume=args.resume))
    command = command_line(argv)
    if args.scheduler == "slurm":
        options = slurm.SlurmOptions(log=args.log, partition=args.partition, time=args.time, account=args.account,
                                     extra=tuple(args.sbatch_args))
        filename, text = slurm.FILENAME, slurm.render(spec, options, command)
    else:
        if not args.image:
            raise UserError(f"--image is required for --scheduler {args.scheduler} (the image built from "
                            "docker/Dockerfile.ascend, pushed to your registry)")
        if args.max_retry < 0:
            raise UserError(f"--max-retry must be >= 0, got {args.max_retry}")
        pod_options = kube.KubeOptions(namespace=args.namespace, queue=args.queue, workdir=args.workdir,
                                       volumes=tuple(args.volumes), node_selector=tuple(args.node_selector),
                                       max_retry=args.max_retry, shared_nodes=args.allow_shared_nodes)
        if args.scheduler == "volcano":
            filename = kube.VOLCANO_FILENAME
            text = kube.render(kube.volcano_documents(spec, pod_options), spec, command, "Volcano Job")
        else:
            filename = kube.ASCENDJOB_FILENAME
            text = kube.render(kube.ascendjob_documents(spec, pod_options), spec, command, "MindX DL AscendJob")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, filename)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    path = render(args, argv)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
