"""Cluster submission: render scheduler jobs (Volcano, MindX DL AscendJob, Slurm) and run cluster pods.

    python -m fcn8s.cluster render --scheduler slurm --nodes 2 --devices-per-node 8 --config C
    python -m fcn8s.cluster.entrypoint -- --config C     (inside a Volcano / AscendJob pod)
"""
