"""Render Kubernetes jobs: a Volcano Job with its rank-table ConfigMap, or a MindX DL AscendJob.

Every pod runs ``launch/pod_entrypoint.sh`` from the image, which starts the pod's ranks (see
``fcn8s.cluster.entrypoint``); NPUs come from the Ascend device plugin (``huawei.com/Ascend910``).
Pods get ``HCCL_CONNECT_TIMEOUT`` / ``HCCL_EXEC_TIMEOUT`` from the config's ``dist`` section and,
unless ``shared_nodes``, a required pod anti-affinity: at most one NPU pod of the job per node.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import yaml

from fcn8s.cluster.spec import DNS_LABEL, JobSpec
from fcn8s.errors import UserError

VOLCANO_FILENAME = "volcano-job.yaml"
ASCENDJOB_FILENAME = "ascendjob.yaml"
NPU_RESOURCE = "huawei.com/Ascend910"
RING_LABEL = "ring-controller.atlas"
RING_VALUE = "ascend-910"
RANK_TABLE_DIR = "/user/serverid/devindex/config"
RANK_TABLE_VOLUME = "ascend-910-config"
CONTAINER = "ascend"  # the Ascend Operator injects its variables into the container of this name
ASCENDJOB_PORT = {"containerPort": 2222, "name": "ascendjob-port"}
# Time between SIGTERM and SIGKILL: ranks finish their step and rank 0 writes a checkpoint.
TERMINATION_GRACE_SECONDS = 360
APP_LABEL = "app"  # value: the job name (kubectl get pods -l app=JOB)
REPLICA_LABEL = "fcn8s-replica"  # "worker" on pods that hold NPUs, "scheduler" on the AscendJob scheduler
WORKER, SCHEDULER = "worker", "scheduler"
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"


@dataclass(frozen=True)
class KubeOptions:
    """Where and how the pods run."""

    namespace: str = "default"
    queue: str = "default"
    workdir: str = "/work"
    volumes: Tuple[str, ...] = ()  # "CLAIM:/mount/path" PersistentVolumeClaims
    node_selector: Tuple[str, ...] = ()  # "key=value"
    max_retry: int = 3
    # False: at most one worker pod per node (hccl-controller keys its rank table entries by node)
    shared_nodes: bool = False


def _field_env(name: str, path: str) -> Dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _claims(options: KubeOptions) -> List[Tuple[str, str]]:
    """(claim, mount path) pairs of --volume, checked."""
    pairs = []
    for text in options.volumes:
        claim, _, path = text.partition(":")
        if not DNS_LABEL.fullmatch(claim) or not posixpath.isabs(path):
            raise UserError(f"--volume {text!r}: expected CLAIM:/mount/path (a PersistentVolumeClaim name and "
                            "an absolute path)")
        pairs.append((claim, path))
    return pairs


def _node_selector(options: KubeOptions) -> Dict[str, str]:
    selector = {}
    for text in options.node_selector:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise UserError(f"--node-selector {text!r}: expected KEY=VALUE")
        selector[key] = value
    return selector


def _one_worker_per_node(spec: JobSpec) -> Dict[str, Any]:
    """Pod anti-affinity: no two worker pods of this job on one node (scheduling fails rather than share)."""
    selector = {"matchLabels": {APP_LABEL: spec.job_name, REPLICA_LABEL: WORKER}}
    return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": selector, "topologyKey": HOSTNAME_TOPOLOGY}]}}


def _pod_template(spec: JobSpec, options: KubeOptions, replica: str, npus: int, extra_env: List[Dict[str, Any]],
                  extra_volumes: List[Tuple[Dict[str, Any], str]], ports: bool) -> Dict[str, Any]:
    """Pod template running the entrypoint; ``extra_volumes`` are (volume, mount path) pairs."""
    volumes = extra_volumes + [({"name": claim, "persistentVolumeClaim": {"claimName": claim}}, path)
                               for claim, path in _claims(options)]
    env = [_field_env("XDL_IP", "status.hostIP"), _field_env("POD_IP", "status.podIP"), *extra_env,
           *({"name": name, "value": value} for name, value in spec.hccl_env().items())]
    container: Dict[str, Any] = {
        "name": CONTAINER, "image": spec.image, "imagePullPolicy": "IfNotPresent", "workingDir": options.workdir,
        "command": ["bash", posixpath.join(options.workdir, "launch", "pod_entrypoint.sh")],
        "args": ["--", *spec.train_args()], "env": env,
        "volumeMounts": [{"name": volume["name"], "mountPath": path} for volume, path in volumes]}
    if npus:
        env.append(_field_env("ASCEND_VISIBLE_DEVICES", f"metadata.annotations['{NPU_RESOURCE}']"))
        container["resources"] = {"requests": {NPU_RESOURCE: npus}, "limits": {NPU_RESOURCE: npus}}
    if ports:
        container["ports"] = [dict(ASCENDJOB_PORT)]
    pod: Dict[str, Any] = {"terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS, "restartPolicy": "Never",
                           "containers": [container], "volumes": [volume for volume, _ in volumes]}
    if options.node_selector:
        pod["nodeSelector"] = _node_selector(options)
    if replica == WORKER and not options.shared_nodes:
        pod["affinity"] = _one_worker_per_node(spec)
    labels = {APP_LABEL: spec.job_name, REPLICA_LABEL: replica, RING_LABEL: RING_VALUE}
    return {"metadata": {"labels": labels}, "spec": pod}


def _metadata(name: str, options: KubeOptions, **labels: str) -> Dict[str, Any]:
    for option, value in (("--namespace", options.namespace), ("--queue", options.queue)):
        if not DNS_LABEL.fullmatch(value):
            raise UserError(f"{option} {value!r}: use 1-63 lowercase letters, digits and '-', starting and "
                            "ending with a letter or digit")
    return {"name": name, "namespace": options.namespace, "labels": {**labels, RING_LABEL: RING_VALUE}}


def volcano_documents(spec: JobSpec, options: KubeOptions) -> List[Dict[str, Any]]:
    """Rank-table ConfigMap (filled in by hccl-controller) and the Volcano Job, one pod per node."""
    config_map = f"rings-config-{spec.job_name}"  # hccl-controller finds it by this name
    table_volume = {"name": RANK_TABLE_VOLUME, "configMap": {"name": config_map}}
    table_env = [{"name": "RANK_TABLE_FILE", "value": posixpath.join(RANK_TABLE_DIR, "hccl.json")}]
    template = _pod_template(spec, options, WORKER, spec.devices_per_node, table_env,
                             [(table_volume, RANK_TABLE_DIR)], ports=False)
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(config_map, options),
         "data": {"hccl.json": '{"status":"initializing"}'}},
        {"apiVersion": "batch.volcano.sh/v1alpha1", "kind": "Job", "metadata": _metadata(spec.job_name, options),
         "spec": {"schedulerName": "volcano", "minAvailable": spec.nodes, "queue": options.queue,
                  "maxRetry": options.max_retry,
                  # preempted or evicted: restart every pod (train with --resume auto to continue);
                  # a failed rank: stop the whole job instead of leaving the others waiting in HCCL
                  "policies": [{"event": "PodEvicted", "action": "RestartJob"},
                               {"event": "PodFailed", "action": "AbortJob"}],
                  "tasks": [{"name": "worker", "replicas": spec.nodes, "template": template}]}},
    ]


def ascendjob_documents(spec: JobSpec, options: KubeOptions) -> List[Dict[str, Any]]:
    """AscendJob: one Scheduler pod (MindSpore scheduler, no NPU) and one Worker pod per node."""
    def replica(role: str, count: int, npus: int) -> Dict[str, Any]:
        return {"replicas": count, "restartPolicy": "Never",
                "template": _pod_template(spec, options, role, npus, [], [], ports=True)}

    return [{
        "apiVersion": "mindxdl.gitee.com/v1", "kind": "AscendJob",
        "metadata": _metadata(spec.job_name, options, framework="mindspore"),
        "spec": {"schedulerName": "volcano",
                 "runPolicy": {"backoffLimit": options.max_retry,
                               "schedulingPolicy": {"minAvailable": spec.nodes + 1, "queue": options.queue}},
                 "successPolicy": "AllWorkers",
                 "replicaSpecs": {"Scheduler": replica(SCHEDULER, 1, 0),
                                  "Worker": replica(WORKER, spec.nodes, spec.devices_per_node)}},
    }]


def render(documents: List[Dict[str, Any]], spec: JobSpec, command: str, kind: str) -> str:
    """Multi-document YAML with a header naming the command that generated it."""
    header = (f"# FCN-8s data-parallel training as a {kind}: {spec.nodes} pod(s) x {spec.devices_per_node} NPU(s).\n"
              "# Generated by (re-render instead of editing):\n"
              f"#   {command}\n"
              "# Submit: kubectl apply -f THIS_FILE; logs: kubectl logs POD (the lowest local rank), all ranks in\n"
              "# RUN.OUTPUT_DIR/logs/POD_NAME/rank_K.log; put run.output_dir on a --volume to keep them.\n")
    body = "---\n".join(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=120)
                        for doc in documents)
    return header + body
