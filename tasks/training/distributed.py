"""Data-parallel training across processes: torchrun, started by the train stage itself when
`train.processes` or `train.nodes` asks for more than one process (or by hand:
`torchrun --nproc-per-node=N -m tasks.train`).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here is a no-op for one
process. NCCL joins GPUs (one per process); gloo joins CPU processes, which is how the tests run it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from tasks.common.cli import ERROR_FILE_ENV
from tasks.common.config import UserError

NODE_RANK_ENV = "TRAIN_NODE_RANK"  # which of train.nodes machines this is (0: the one whose outputs DVC records)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes files and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over all processes (in place, returned for chaining)."""
        if self.size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def join_world(device_choice: str) -> World:
    """Join the process group torchrun describes, or stay alone."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device_choice != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return world


def leave_world(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def process_count(choice: int | str) -> int:
    """train.processes resolved: auto is one process per visible CUDA GPU, else 1."""
    return max(1, torch.cuda.device_count()) if choice == "auto" else int(choice)


def launched() -> bool:
    """Whether a launcher such as torchrun started this process (it sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def node_rank() -> int:
    """This machine's place among train.nodes: $TRAIN_NODE_RANK, 0 (the first node) when unset."""
    value = os.environ.get(NODE_RANK_ENV, "0")
    if not value.isdigit():
        raise UserError(f"{NODE_RANK_ENV}={value!r}: must be this machine's number among train.nodes, 0 for the first")
    return int(value)


def torchrun_command(processes: int, module: str, nodes: int = 1, rendezvous: str | None = None) -> list[str]:
    """torchrun for `processes` processes here: alone, or as node $TRAIN_NODE_RANK of `nodes` machines
    meeting at `rendezvous` (HOST:PORT of node 0), each of which runs the same command."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}"]
    if nodes == 1:
        cmd.append("--standalone")  # a private rendezvous on a free local port
    else:
        rank = node_rank()
        if rank >= nodes:
            raise UserError(f"{NODE_RANK_ENV}={rank} but train.nodes is {nodes}: number the machines 0 to {nodes - 1}")
        host, _, port = rendezvous.rpartition(":")
        cmd += [f"--nnodes={nodes}", f"--node-rank={rank}", f"--master-addr={host}", f"--master-port={port}"]
    return [*cmd, "-m", module]


def launch(cmd: list[str], workdir: Path) -> None:
    """Run a torchrun command in workdir until its processes finish.

    Their progress (stdout) passes straight through. A stage error in any of them comes back as
    that one line (a UserError); torchrun's own report of a crashed process is shown only when no
    process said why.
    """
    with tempfile.TemporaryDirectory() as scratch:
        reason_file = Path(scratch) / "error.txt"
        env = {**os.environ, ERROR_FILE_ENV: str(reason_file)}
        done = subprocess.run(cmd, cwd=workdir, env=env, stderr=subprocess.PIPE, text=True)
        if done.returncode == 0:
            sys.stderr.write(done.stderr)
            return
        if reason_file.is_file():
            raise UserError(reason_file.read_text())
        sys.stderr.write(done.stderr[-4000:])
        raise UserError(f"training under torchrun failed (exit {done.returncode}): a process died; see its "
                        "report above. Run the stage again to resume from the last epoch")
