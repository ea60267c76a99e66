"""Launcher test worker: writes the launch-related environment it was started with, then exits."""
import json
import os
import sys

KEYS = ("DEVICE_ID", "RANK_ID", "RANK_SIZE", "RANK_TABLE_FILE", "MS_ROLE", "MS_NODE_ID", "MS_WORKER_NUM")

if __name__ == "__main__":
    report = {key: os.environ.get(key) for key in KEYS}
    report["cwd"] = os.getcwd()
    with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK_ID']}.json"), "w") as handle:
        json.dump(report, handle)
