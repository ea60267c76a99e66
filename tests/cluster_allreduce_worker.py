"""Pod entrypoint test worker: joins MindSpore's dynamic cluster on CPU, all-reduces rank + 1, reports."""
import json
import os
import sys

import mindspore as ms
from mindspore import ops

from fcn8s.distributed import init_distributed

if __name__ == "__main__":
    ms.set_device("CPU")
    ctx = init_distributed()
    total = ops.AllReduce()(ms.Tensor([float(ctx.rank + 1)], ms.float32)).asnumpy()[0]
    report = {"rank": ctx.rank, "size": ctx.size, "launcher": ctx.launcher, "allreduce": float(total),
              "DEVICE_ID": os.environ.get("DEVICE_ID"), "MS_NODE_ID": os.environ.get("MS_NODE_ID")}
    with open(os.path.join(sys.argv[1], f"rank{ctx.rank}.json"), "w") as handle:
        json.dump(report, handle)
