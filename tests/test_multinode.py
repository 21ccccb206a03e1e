"""Two torchrun "nodes" on one machine (``--nnodes 2``, c10d rendezvous, gloo, one process each) train on
one dataset read through a ``file://`` URL and end with bit-identical parameters. On one machine both
agents resolve the endpoint to themselves: ``is_host`` says which one serves the rendezvous store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from tests.test_loader import make_dataset
from tests.test_train import ROOT, TINY
from training.distributed import param_digest

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
TIMEOUT = 240  # two torch start-ups at once on a shared 2-core machine; a hang fails here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_train_one_model_from_a_url(tmp_path):
    data, _ = make_dataset(tmp_path)
    url = (data / "manifest.json").resolve().as_uri()  # file:///...: the loaders' URL path, not a folder
    out, port = tmp_path / "run", free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    nodes = []
    for node_rank in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node_rank),
               "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"localhost:{port}",
               "--rdzv_id", "lcrypt-two-nodes", "--rdzv_conf", f"is_host={int(node_rank == 0)}",
               "-m", "training.train", "--data", url, "--out", str(tmp_path), "--name", "run", *TINY,
               "--epochs", "1"]
        nodes.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    results = []
    for p in nodes:
        try:
            results.append(p.communicate(timeout=TIMEOUT))
        except subprocess.TimeoutExpired:
            for q in nodes:
                q.terminate()
            pytest.fail(f"a torchrun node hung for {TIMEOUT} s")
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(err[-3000:] for _, err in results)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world"] == 2
    digests = summary["param_digests"]  # each rank hashed its own replica; gathered in rank order
    assert len(digests) == 2 and digests[0] == digests[1]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)

    class Saved(torch.nn.Module):  # param_digest over the checkpoint's state_dict, as rank 0 saved it
        def state_dict(self, *a, **k):
            return ckpt["model"]

    assert param_digest(Saved()) == digests[0]
