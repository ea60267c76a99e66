"""python -m fcn8s.cluster render: Slurm script, Volcano Job, AscendJob; checked-in examples in sync."""
import copy
import glob
import json
import os
import re
import shlex
import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO, run_module

SHELLCHECK = os.path.join(os.path.dirname(sys.executable), "shellcheck")
SCHEMAS = os.path.join(REPO, "fcn8s", "cluster", "schemas")
K8S_VERSION = kubernetes_validate.latest_version()
IMAGE = "registry.example.com/fcn8s:ascend"
EXAMPLES = sorted(glob.glob(os.path.join(REPO, "docker", "k8s", "*.yaml"))
                  + glob.glob(os.path.join(REPO, "docker", "slurm", "*.sbatch")))


def render(tmp_path, scheduler, *extra, nodes=2, devices=4, config="configs/cpu_smoke.yaml"):
    """Render into tmp_path; returns (CompletedProcess, text of the written file or None)."""
    result = run_module("fcn8s.cluster", "render", "--scheduler", scheduler, "--nodes", nodes,
                        "--devices-per-node", devices, "--config", config, "--out", tmp_path, *extra)
    written = [p for p in tmp_path.iterdir() if p.is_file()]
    return result, (written[0].read_text() if len(written) == 1 else None)


def test_slurm_script_requests_one_task_per_device(tmp_path):
    result, text = render(tmp_path, "slurm", "--job-name", "seg-run", "--partition", "debug", "--time", "01:00:00",
                          "--sbatch-arg=--gres=npu:4", "--set", "train.max_steps=7", "--set", "run.output_dir=out dir")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {tmp_path / 'fcn8s.sbatch'}"
    directives = re.findall(r"^#SBATCH (\S+)$", text, re.M)
    assert directives == ["--job-name=seg-run", "--nodes=2", "--ntasks-per-node=4", "--output=%x-%j.out",
                          "--requeue", "--open-mode=append", "--partition=debug", "--time=01:00:00", "--gres=npu:4"]
    srun = text[text.index("exec srun"):]
    assert "--kill-on-bad-exit=1" in srun and "--nodes=2 --ntasks-per-node=4" in srun
    assert ('-m fcn8s.train --config configs/cpu_smoke.yaml --set train.max_steps=7 '
            '--set "run.output_dir=${OUTPUT_DIR}" --resume "${RESUME}"') in srun
    assert "DEFAULT_OUTPUT_DIR='out dir'" in text  # the override's value, shell-quoted
    checked = subprocess.run([SHELLCHECK, str(tmp_path / "fcn8s.sbatch")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def run_with_stub_srun(tmp_path, script, record_env=(), **env_vars):
    """Run ``script`` with a stub srun on PATH; returns (result, recorded lines): cwd, PYTHONPATH, args.

    ``record_env`` names variables whose values the stub records first, as ``NAME=value`` lines.
    """
    stub = tmp_path / "bin" / "srun"
    stub.parent.mkdir(exist_ok=True)
    env_lines = "".join(f'"{name}=${{{name}-<unset>}}" ' for name in record_env)
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" {env_lines}"$PWD" "$PYTHONPATH" "$@" > "$RECORD"\n')
    stub.chmod(0o755)
    record = tmp_path / "record.txt"
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "RECORD": str(record),
           "SLURM_SUBMIT_DIR": REPO, **env_vars}
    for name in ("PYTHONPATH", *record_env):
        if name not in env_vars:
            env.pop(name, None)
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    return done, record.read_text().splitlines() if record.exists() else []


def test_slurm_script_exports_hccl_timeouts_from_the_config(tmp_path):
    config = tmp_path / "cfg" / "job.yaml"
    config.parent.mkdir()
    config.write_text(open(os.path.join(REPO, "configs", "cpu_smoke.yaml")).read()
                      + "dist:\n  hccl_exec_timeout: 3400\n")
    result, text = render(tmp_path, "slurm", "--set", "dist.hccl_connect_timeout=1200", config=config)
    assert result.returncode == 0, result.stderr
    assert 'export HCCL_CONNECT_TIMEOUT="${HCCL_CONNECT_TIMEOUT:-1200}"' in text
    assert 'export HCCL_EXEC_TIMEOUT="${HCCL_EXEC_TIMEOUT:-3400}"' in text
    names = ("HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT")
    done, lines = run_with_stub_srun(tmp_path, tmp_path / "fcn8s.sbatch", names)
    assert done.returncode == 0, done.stderr
    assert lines[:2] == ["HCCL_CONNECT_TIMEOUT=1200", "HCCL_EXEC_TIMEOUT=3400"]  # file + override, resolved
    done, lines = run_with_stub_srun(tmp_path, tmp_path / "fcn8s.sbatch", names, HCCL_CONNECT_TIMEOUT="2400")
    assert done.returncode == 0, done.stderr
    assert lines[:2] == ["HCCL_CONNECT_TIMEOUT=2400", "HCCL_EXEC_TIMEOUT=3400"]  # the submit env wins, as in train
    checked = subprocess.run([SHELLCHECK, str(tmp_path / "fcn8s.sbatch")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def test_slurm_script_honours_python_repo_dir_and_output_dir(tmp_path):
    """Run the script with a stub srun on PATH that records what it would start."""
    result, _ = render(tmp_path, "slurm", "--set", "train.max_steps=7")
    assert result.returncode == 0, result.stderr
    done, lines = run_with_stub_srun(tmp_path, tmp_path / "fcn8s.sbatch", PYTHON="/opt/py/bin/python",
                                     OUTPUT_DIR="/scratch/run1")
    assert done.returncode == 0, done.stderr
    assert lines[:2] == [REPO, REPO]
    assert lines[2:] == ["--kill-on-bad-exit=1", "--label", "--nodes=2", "--ntasks-per-node=4", "/opt/py/bin/python",
                         "-m", "fcn8s.train", "--config", "configs/cpu_smoke.yaml", "--set", "train.max_steps=7",
                         "--set", "run.output_dir=/scratch/run1", "--resume", "auto"]
    assert "checkpoints in /scratch/run1/checkpoints" in done.stdout


@pytest.mark.parametrize("resume, first_attempt", [(None, "auto"), ("auto", "auto"), ("/ck pt/a.ckpt", "/ck pt/a.ckpt")])
def test_slurm_script_is_requeueable_and_every_attempt_resumes(tmp_path, resume, first_attempt):
    """Preemption, node failure or `scontrol requeue` rerun the script under the same job id (SLURM_RESTART_COUNT
    counts the reruns): it must continue from the job's newest checkpoint and append to the same log."""
    extra = ("--resume", resume) if resume else ()
    result, text = render(tmp_path, "slurm", "--sbatch-arg=--requeue", "--sbatch-arg=--signal=B:TERM@300", *extra)
    assert result.returncode == 0, result.stderr
    directives = re.findall(r"^#SBATCH (\S+)$", text, re.M)
    assert directives.count("--requeue") == 1 and "--open-mode=append" in directives  # the extra copy is dropped
    assert directives[-1] == "--signal=B:TERM@300"
    script = tmp_path / "fcn8s.sbatch"
    for restarts, expected in ((None, first_attempt), ("0", first_attempt), ("1", "auto"), ("2", "auto")):
        env = {"SLURM_JOB_ID": "42"} if restarts is None else {"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": restarts}
        done, lines = run_with_stub_srun(tmp_path, script, **env)
        assert done.returncode == 0, done.stderr
        assert lines[-2:] == ["--resume", expected], (restarts, lines)
        attempt = 1 + int(restarts or 0)
        assert f"job 42 attempt {attempt} (SLURM_RESTART_COUNT={restarts or 0})" in done.stdout
        assert f"--resume {expected}" in done.stdout
    checked = subprocess.run([SHELLCHECK, str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


@pytest.mark.parametrize("args, message", [
    (["--nodes", "0"], "error: --nodes must be >= 1, got 0"),
    (["--devices-per-node", "-1"], "error: --devices-per-node must be >= 1, got -1"),
    (["--scheduler", "kubeflow"], "error: argument --scheduler: invalid choice: 'kubeflow'"),
    (["--config", "configs/missing.yaml"], "error: config file not found: configs/missing.yaml"),
    (["--set", "train.learning_rate=1"], "error: unknown key 'train.learning_rate'"),
    (["--set", "train.lr=fast"], "error: train.lr: expected a number, got 'fast'"),
    (["--job-name", "My_Job"], "error: --job-name 'My_Job': use 1-52 lowercase letters"),
    (["--job-name", "j" * 53], f"error: --job-name '{'j' * 53}': use 1-52 lowercase letters"),
    (["--sbatch-arg=gres=npu:8"], "error: sbatch option 'gres=npu:8': expected one '--key=value' word"),
    (["--set", "dist.hccl_exec_timeout=100"], "error: dist.hccl_exec_timeout: must be a multiple of 68"),
    (["--set", "dist.hccl_connect_timeout=60"], "error: dist.hccl_connect_timeout"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    base = ["--scheduler", "slurm", "--nodes", "1", "--devices-per-node", "2", "--config", "configs/cpu_smoke.yaml"]
    result = run_module("fcn8s.cluster", "render", *base, *args, "--out", tmp_path / "out")  # last one wins
    assert result.returncode == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def validate_core(doc):
    """Strict validation of a core Kubernetes object (unknown fields are errors)."""
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def validate_pod_template(template, name):
    validate_core({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template})


def validate_custom(doc, schema_file):
    with open(os.path.join(SCHEMAS, schema_file)) as handle:
        jsonschema.validate(doc, json.load(handle), cls=jsonschema.Draft202012Validator)


def container_of(template):
    (container,) = template["spec"]["containers"]
    return container


@pytest.mark.parametrize("nodes, devices", [(1, 1), (2, 8), (4, 4)])
def test_volcano_job_is_valid_and_sized_as_requested(tmp_path, nodes, devices):
    result, text = render(tmp_path, "volcano", "--image", IMAGE, "--job-name", "seg", "--volume", "data:/data",
                          "--set", "run.output_dir=/data/runs/seg", nodes=nodes, devices=devices)
    assert result.returncode == 0, result.stderr
    config_map, job = yaml.safe_load_all(text)
    validate_core(config_map)
    assert config_map["metadata"]["name"] == "rings-config-seg"
    assert config_map["metadata"]["labels"] == {"ring-controller.atlas": "ascend-910"}
    assert json.loads(config_map["data"]["hccl.json"]) == {"status": "initializing"}
    validate_custom(job, "volcano-job.schema.json")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate_core(job)  # a custom resource: kubernetes-validate has no schema for it
    assert job["metadata"]["labels"]["ring-controller.atlas"] == "ascend-910"
    assert job["spec"]["minAvailable"] == nodes
    (task,) = job["spec"]["tasks"]
    assert task["replicas"] == nodes
    validate_pod_template(task["template"], "worker")
    assert task["template"]["metadata"]["labels"]["ring-controller.atlas"] == "ascend-910"
    container = container_of(task["template"])
    assert container["resources"] == {"requests": {"huawei.com/Ascend910": devices},
                                      "limits": {"huawei.com/Ascend910": devices}}
    assert container["image"] == IMAGE
    assert container["command"] == ["bash", "/work/launch/pod_entrypoint.sh"]
    assert container["args"] == ["--", "--config", "configs/cpu_smoke.yaml", "--set", "run.output_dir=/data/runs/seg"]
    env = {item["name"]: item for item in container["env"]}
    assert env["XDL_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["RANK_TABLE_FILE"]["value"] == "/user/serverid/devindex/config/hccl.json"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in task["template"]["spec"]["volumes"]}
    assert volumes[mounts["/user/serverid/devindex/config"]]["configMap"]["name"] == "rings-config-seg"
    assert volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == "data"


@pytest.mark.parametrize("nodes, devices", [(1, 8), (3, 2)])
def test_ascendjob_is_valid_and_sized_as_requested(tmp_path, nodes, devices):
    result, text = render(tmp_path, "ascendjob", "--image", IMAGE, "--node-selector", "accelerator-type=module",
                          nodes=nodes, devices=devices)
    assert result.returncode == 0, result.stderr
    (job,) = yaml.safe_load_all(text)
    validate_custom(job, "ascendjob.schema.json")
    assert job["metadata"]["labels"] == {"framework": "mindspore", "ring-controller.atlas": "ascend-910"}
    assert job["spec"]["runPolicy"]["schedulingPolicy"]["minAvailable"] == nodes + 1
    specs = job["spec"]["replicaSpecs"]
    assert (specs["Scheduler"]["replicas"], specs["Worker"]["replicas"]) == (1, nodes)
    for role, replica in specs.items():
        validate_pod_template(replica["template"], role.lower())
        container = container_of(replica["template"])
        assert container["name"] == "ascend"  # where the Ascend Operator injects MS_* variables
        assert container["ports"] == [{"containerPort": 2222, "name": "ascendjob-port"}]
        assert replica["template"]["spec"]["nodeSelector"] == {"accelerator-type": "module"}
    assert container_of(specs["Worker"]["template"])["resources"]["limits"] == {"huawei.com/Ascend910": devices}
    assert "resources" not in container_of(specs["Scheduler"]["template"])  # the scheduler needs no NPU


@pytest.mark.parametrize("schema_file, path, bad_value", [
    ("volcano-job.schema.json", ["spec", "minAvailble"], 2),  # typo: the API server would drop it silently
    ("volcano-job.schema.json", ["spec", "policies", 0, "event"], "PodCrashed"),
    ("volcano-job.schema.json", ["spec", "tasks", 0, "replicas"], -1),
    ("ascendjob.schema.json", ["spec", "replicaSpecs", "Scheduler", "replicas"], 2),
    ("ascendjob.schema.json", ["spec", "replicaSpecs", "Launcher"], {"template": {"spec": {"containers": [{}]}}}),
    ("ascendjob.schema.json", ["metadata", "labels", "framework"], "mxnet"),
])
def test_schemas_reject_broken_jobs(tmp_path, schema_file, path, bad_value):
    scheduler = "volcano" if schema_file.startswith("volcano") else "ascendjob"
    result, text = render(tmp_path, scheduler, "--image", IMAGE)
    assert result.returncode == 0, result.stderr
    job = list(yaml.safe_load_all(text))[-1]
    validate_custom(job, schema_file)
    broken = copy.deepcopy(job)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad_value
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(broken, schema_file)


@pytest.mark.parametrize("scheduler, args, message", [
    ("volcano", [], "error: --image is required for --scheduler volcano"),
    ("ascendjob", ["--image", IMAGE, "--volume", "data"], "error: --volume 'data': expected CLAIM:/mount/path"),
    ("volcano", ["--image", IMAGE, "--volume", "Data:/x"], "error: --volume 'Data:/x': expected CLAIM:/mount/path"),
    ("volcano", ["--image", IMAGE, "--node-selector", "gpu"], "error: --node-selector 'gpu': expected KEY=VALUE"),
    ("ascendjob", ["--image", IMAGE, "--max-retry", "-1"], "error: --max-retry must be >= 0, got -1"),
    ("volcano", ["--image", IMAGE, "--namespace", "Team A"], "error: --namespace 'Team A': use 1-63 lowercase"),
    ("volcano", ["--image", IMAGE, "--namespace", "n" * 64], f"error: --namespace '{'n' * 64}': use 1-63 lowercase"),
])
def test_bad_kubernetes_options(tmp_path, scheduler, args, message):
    result = run_module("fcn8s.cluster", "render", "--scheduler", scheduler, "--nodes", "1", "--devices-per-node", "1",
                        "--config", "configs/cpu_smoke.yaml", *args, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "out").exists()


def test_output_dir_follows_the_config_modules_precedence(tmp_path):
    """The job's run.output_dir is what fcn8s.train would resolve: last override > YAML > default."""
    from fcn8s.cluster.spec import JobSpec
    from fcn8s.config import RunConfig
    config = tmp_path / "job.yaml"
    config.write_text("run:\n  output_dir: from/yaml\n")
    assert JobSpec(1, 1, str(config)).output_dir() == "from/yaml"
    bare = tmp_path / "bare.yaml"
    bare.write_text("model:\n  num_classes: 21\n")
    assert JobSpec(1, 1, str(bare)).output_dir() == RunConfig.output_dir
    overrides = ("run.output_dir=/first", "run={output_dir: /whole/section, mode: graph}")
    assert JobSpec(1, 1, str(config), overrides).output_dir() == "/whole/section"
    assert JobSpec(1, 1, str(config), overrides[::-1]).output_dir() == "/first"


def test_help_lists_the_schedulers():
    result = run_module("fcn8s.cluster", "render", "--help")
    assert result.returncode == 0
    for word in ("volcano-job.yaml", "ascendjob.yaml", "fcn8s.sbatch", "--devices-per-node", "--partition",
                 "--allow-shared-nodes", "anti-affinity", "HCCL_CONNECT_TIMEOUT", "dist.hccl_connect_timeout="):
        assert word in result.stdout


SCHEMA_OF = {"volcano": "volcano-job.schema.json", "ascendjob": "ascendjob.schema.json"}


def pod_templates(text):
    """{role: pod template} of a rendered Volcano Job ("worker") or AscendJob ("scheduler", "worker")."""
    job = list(yaml.safe_load_all(text))[-1]
    if job["kind"] == "Job":
        return {task["name"]: task["template"] for task in job["spec"]["tasks"]}
    return {role.lower(): replica["template"] for role, replica in job["spec"]["replicaSpecs"].items()}


def matches(selector, labels):
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


@pytest.mark.parametrize("scheduler", ["volcano", "ascendjob"])
def test_worker_pods_get_one_node_each(tmp_path, scheduler):
    """hccl-controller writes one rank-table entry per pod keyed by the node: by default never two pods per node."""
    result, text = render(tmp_path, scheduler, "--image", IMAGE, "--job-name", "seg")
    assert result.returncode == 0, result.stderr
    templates = pod_templates(text)
    worker = templates.pop("worker")
    (term,) = worker["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"]["app"] == "seg"
    assert matches(term["labelSelector"], worker["metadata"]["labels"])  # repels the job's other workers
    for other in templates.values():  # the AscendJob scheduler holds no NPU: it may share a worker's node
        assert "affinity" not in other["spec"]
        assert not matches(term["labelSelector"], other["metadata"]["labels"])
    validate_pod_template(worker, "worker")
    validate_custom(list(yaml.safe_load_all(text))[-1], SCHEMA_OF[scheduler])


@pytest.mark.parametrize("scheduler", ["volcano", "ascendjob"])
def test_allow_shared_nodes_drops_the_anti_affinity(tmp_path, scheduler):
    result, text = render(tmp_path, scheduler, "--image", IMAGE, "--allow-shared-nodes")
    assert result.returncode == 0, result.stderr
    assert "--allow-shared-nodes" in text.splitlines()[2]  # the header's command reproduces it
    for role, template in pod_templates(text).items():
        assert "affinity" not in template["spec"], role
        validate_pod_template(template, role)


def hccl_env(template):
    env = {item["name"]: item.get("value") for item in container_of(template)["env"]}
    return env.get("HCCL_CONNECT_TIMEOUT"), env.get("HCCL_EXEC_TIMEOUT")


@pytest.mark.parametrize("scheduler", ["volcano", "ascendjob"])
def test_pods_export_hccl_timeouts_from_the_config(tmp_path, scheduler):
    result, text = render(tmp_path, scheduler, "--image", IMAGE)
    assert result.returncode == 0, result.stderr
    for role, template in pod_templates(text).items():
        assert hccl_env(template) == ("600", "1836"), role  # DistConfig defaults, as strings
    (tmp_path / "overrides").mkdir()
    result, text = render(tmp_path / "overrides", scheduler, "--image", IMAGE, "--set", "dist.hccl_connect_timeout=1800",
                          "--set", "dist.hccl_exec_timeout=68")
    assert result.returncode == 0, result.stderr
    for role, template in pod_templates(text).items():
        assert hccl_env(template) == ("1800", "68"), role
        validate_pod_template(template, role)


def test_there_are_checked_in_examples():
    names = {os.path.relpath(path, REPO) for path in EXAMPLES}
    assert {"docker/slurm/fcn8s.sbatch", "docker/k8s/volcano-job.yaml", "docker/k8s/ascendjob.yaml"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: os.path.relpath(p, REPO))
def test_checked_in_example_is_what_its_command_renders(example, tmp_path):
    text = open(example).read()
    command = re.search(r"^#   (python -m fcn8s\.cluster render .*)$", text, re.M)
    assert command, f"{example} does not name the command that generated it"
    args = shlex.split(command.group(1))[3:]
    result = run_module("fcn8s.cluster", *args, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / os.path.basename(example)).read_text() == text, \
        f"{example} is out of date: re-run the command in its header with --out {os.path.dirname(example)}"
