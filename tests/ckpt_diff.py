"""Largest absolute difference between the float arrays of two checkpoints (run as a subprocess).

    python -m tests.ckpt_diff A.ckpt B.ckpt   ->  prints {"same_names": bool, "max_abs_diff": float}

A separate process keeps two ~1 GB FCN-8s checkpoints out of the test runner's memory.
"""
import json
import sys

import mindspore as ms
import numpy as np


def float_arrays(path):
    return {name: param.asnumpy() for name, param in ms.load_checkpoint(path).items()
            if np.issubdtype(param.asnumpy().dtype, np.floating)}


if __name__ == "__main__":
    first, second = float_arrays(sys.argv[1]), float_arrays(sys.argv[2])
    same = first.keys() == second.keys()
    worst = max(float(np.max(np.abs(first[k] - second[k]))) for k in first) if same else float("inf")
    print(json.dumps({"same_names": same, "max_abs_diff": worst}))
