"""Worker for the host-read and data-sink tests: trains the small FCN-8s twice in one process and prints
one JSON line per run: the steps at which the host read the step's outputs, the parameter checksum and the
losses of metrics.jsonl.

Run 1 is the per-step loop. Run 2 is the data-sink loop (``train.sink_size``) as on Ascend, with
``fcn8s.trainer.sink_steps`` replaced by a CPU stand-in (MindSpore has no data sink on CPU): each call runs
``sink_size`` compiled steps on the epoch's batches and returns the last step's outputs, as
``mindspore.data_sink`` does. Usage: python -m tests.host_sync_worker MINDRECORD_DIR OUT SINK_SIZE OVERRIDE...
"""
import json
import os
import sys

import mindspore as ms

from fcn8s import trainer as trainer_module
from fcn8s.config import load_config
from fcn8s.data.pipeline import count_samples
from fcn8s.model import build_model
from fcn8s.runtime import start
from fcn8s.trainer import StepResult, Trainer, parameter_checksum


def cpu_sink(step, dataset, size):
    """What ``mindspore.data_sink(step, dataset, size)`` computes, fed by the host."""
    batches = dataset.create_tuple_iterator(num_epochs=1)
    compiled = ms.jit(step)

    def run():
        for _ in range(size):
            outputs = compiled(*next(batches))
        return outputs
    return run


def train(mindrecord_dir: str, out: str, overrides: list, device_target: str) -> dict:
    cfg = load_config("configs/cpu_smoke.yaml", [f"data.mindrecord_dir={mindrecord_dir}", f"run.output_dir={out}",
                                                 "run.tensorboard=false", *overrides])
    ctx = start(cfg)
    os.makedirs(out)
    trainer = Trainer(cfg, ctx, build_model(cfg.model, "matmul"), count_samples(mindrecord_dir), device_target)
    reads = []
    read = StepResult.read

    def counted_read(outputs):
        reads.append(trainer.step)
        return read(outputs)
    StepResult.read = staticmethod(counted_read)
    try:
        trainer.fit()
    finally:
        StepResult.read = read
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as handle:
        losses = {record["step"]: record["loss"] for record in map(json.loads, handle)}
    return {"reads": reads, "checksum": parameter_checksum(trainer.net), "losses": losses}


def main(mindrecord_dir: str, out: str, sink_size: str, *overrides: str) -> int:
    loop = train(mindrecord_dir, os.path.join(out, "loop"), list(overrides), "CPU")
    trainer_module.sink_steps = cpu_sink
    sunk = train(mindrecord_dir, os.path.join(out, "sink"), [*overrides, f"train.sink_size={sink_size}"], "Ascend")
    print(json.dumps({"loop": loop, "sink": sunk}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
