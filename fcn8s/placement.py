"""Which ranks this server runs, on which device, with which environment.

One implementation for every supervisor that starts ranks (``python -m fcn8s.launch`` /
``run_distribute.sh`` on a host, ``fcn8s.cluster.entrypoint`` in a pod):

* rank table (HCCL on Ascend): this server's entry decides. It is found by ``SERVER_ID`` (a
  server_id of the table, or the index of the entry), else by ``container_ip`` = this pod's IP,
  else by ``server_id`` / ``host_ip`` = one of this host's addresses; entries that share a
  server_id (several pods on one node) are told apart by their device lists. Ranks are the
  table's ``rank_id``; ``DEVICE_ID`` is the *logical* id (the device's position among the NPUs
  this process sees), while the table carries physical ids.
* dynamic cluster (CPU, or Ascend without a rank table): ``nnodes`` servers with ``nproc`` ranks
  each, global rank = node_rank x nproc + local rank; MindSpore's scheduler runs on node 0.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set

from rank_table import RankTableError, devices

from fcn8s.distributed import worker_env
from fcn8s.errors import UserError

RT_VISIBLE_ENV = "ASCEND_RT_VISIBLE_DEVICES"  # CANN runtime: the process sees these as 0..n-1
SERVER_ID_ENV = "SERVER_ID"


@dataclass(frozen=True)
class RankSpec:
    """One rank this server starts: its global rank and the variables it gets."""

    rank: int
    local_rank: int
    env: Dict[str, str]


@dataclass(frozen=True)
class NodePlan:
    """This server's part of the job."""

    node_rank: int
    nnodes: int
    world_size: int
    ranks: List[RankSpec]
    source: str  # "rank_table" or "dynamic_cluster"
    server: str = ""  # the server as the plan knows it (table server_id or master address)
    scheduler: Optional[Dict[str, Any]] = field(default=None)  # {"host", "port"} when this node runs it

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form (``--dry-run`` output)."""
        return {"source": self.source, "server": self.server, "node_rank": self.node_rank, "nnodes": self.nnodes,
                "world_size": self.world_size, "scheduler": self.scheduler,
                "ranks": [{"rank": r.rank, "local_rank": r.local_rank, "env": r.env} for r in self.ranks]}


def visible_npus(env: Mapping[str, str]) -> List[int]:
    """Physical ids of the NPUs this process can use, in logical order (position = logical id).

    ``ASCEND_RT_VISIBLE_DEVICES`` (CANN runtime), else ``ASCEND_VISIBLE_DEVICES`` (Ascend docker
    runtime / device plugin), else the ``/dev/davinciN`` nodes; [] on a host without NPUs.
    """
    for name in (RT_VISIBLE_ENV, devices.VISIBLE_ENV):
        spec = env.get(name, "").strip()
        if spec:
            try:
                return devices.parse_device_spec(spec)
            except RankTableError as err:
                raise UserError(f"{name}: {err}") from None
    try:
        return devices.list_dev_nodes()
    except RankTableError:
        return []


def find_server(table: Mapping[str, Any], addresses: Mapping[str, Set[str]], env: Mapping[str, str],
                visible: Sequence[int]) -> int:
    """Index of this server's entry in ``table["server_list"]``; a UserError naming the candidates otherwise.

    ``addresses`` has this pod's IPs under "pod" and its host's under "host".
    """
    servers = table["server_list"]
    wanted = env.get(SERVER_ID_ENV, "").strip()
    if wanted:
        ids = [server["server_id"] for server in servers]
        if wanted in ids and ids.count(wanted) == 1:
            return ids.index(wanted)
        if wanted.isdigit() and int(wanted) < len(servers):
            return int(wanted)
        raise UserError(f"{SERVER_ID_ENV}={wanted!r} names no single server of the rank table "
                        f"(server_ids: {', '.join(ids)}; or an index 0..{len(servers) - 1})")

    def is_me(server: Mapping[str, Any]) -> bool:
        if server.get("container_ip"):
            return server["container_ip"] in addresses["pod"]
        return bool({server["server_id"], server.get("host_ip")} & addresses["host"])

    matches = [index for index, server in enumerate(servers) if is_me(server)]
    if len(matches) > 1:  # several pods of one node, each with its own NPUs
        mine = set(visible)
        matches = [index for index in matches if _physical_ids(servers[index]) == mine] or matches
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(server.get("container_ip") or server["server_id"] for server in servers)
    own = ", ".join(sorted(a for a in addresses["pod"] | addresses["host"] if not a.startswith("127.")))
    problem = ("no server entry in the rank table matches" if not matches
               else f"{len(matches)} server entries in the rank table match")
    raise UserError(f"{problem} this server ({own}); servers: {known}. Set {SERVER_ID_ENV} "
                    "(or XDL_IP / POD_IP in a pod)")


def _physical_ids(server: Mapping[str, Any]) -> Set[int]:
    return {int(device["device_id"]) for device in server["device"]}


def rank_table_plan(table: Mapping[str, Any], index: int, path: str, visible: Sequence[int]) -> NodePlan:
    """Ranks of server ``index``: table rank ids, logical ``DEVICE_ID`` among the ``visible`` NPUs."""
    servers = table["server_list"]
    server = servers[index]
    world = sum(len(entry["device"]) for entry in servers)
    entries = sorted(server["device"], key=lambda device: int(device["device_id"]))
    physical = [int(device["device_id"]) for device in entries]
    if visible:
        missing = [device for device in physical if device not in visible]
        if missing:
            raise UserError(f"rank table {path}: server {server['server_id']} lists NPU(s) {physical} but "
                            f"{', '.join(map(str, missing))} not visible here (visible: {list(visible)})")
        logical = [list(visible).index(device) for device in physical]
    else:  # a pod whose runtime remaps its NPUs to 0..n-1
        logical = list(range(len(physical)))
    ranks = [RankSpec(int(device["rank_id"]), local,
                      {"DEVICE_ID": str(local), "RANK_ID": device["rank_id"], "RANK_SIZE": str(world),
                       "RANK_TABLE_FILE": os.path.abspath(path)})
             for local, device in zip(logical, entries)]
    return NodePlan(node_rank=index, nnodes=len(servers), world_size=world, ranks=sorted(ranks, key=lambda r: r.rank),
                    source="rank_table", server=server["server_id"])


def dynamic_cluster_plan(nproc: int, nnodes: int, node_rank: int, master_addr: str, scheduler_port: int) -> NodePlan:
    """Ranks node_rank x nproc .. of nnodes x nproc as MindSpore dynamic-cluster workers."""
    world = nnodes * nproc
    ranks = []
    for local in range(nproc):
        rank = node_rank * nproc + local
        ranks.append(RankSpec(rank, local, {
            **worker_env(rank, world, master_addr, scheduler_port), "RANK_ID": str(rank), "RANK_SIZE": str(world),
            "MS_LOCAL_WORKER": str(nproc), "DEVICE_ID": str(local)}))
    scheduler = {"host": master_addr, "port": scheduler_port} if node_rank == 0 else None
    return NodePlan(node_rank=node_rank, nnodes=nnodes, world_size=world, ranks=ranks, source="dynamic_cluster",
                    server=master_addr, scheduler=scheduler)
