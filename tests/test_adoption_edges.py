"""Adoption edge cases a red team found (in-process, real files and tmpfs;
the sshd ones at the end): a legacy path spelled with "..", output-like
values, a coordinator node with an empty user name."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_aliases import site  # noqa: F401  (stale preload copies beside current SSD files)
from test_faults import cluster, make_policy  # noqa: F401

from prng_cache.inputs import discover
from prng_cache.plugin import PrngCachePlugin
from prng_cache.policy import InputsPolicy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from scripts_coordinator import Job, NodeConfig  # noqa: E402

sys.path.pop(0)
NAMES = ("bidirectional_survivors_binary.npz", "train_history.json", "holdout_history.json")


def _start(policy, nodes, jobs):
    p = PrngCachePlugin(policy)
    p.coordinator_run_start(run_id="r", nodes=nodes, jobs=jobs, assignments={n.hostname: jobs for n in nodes})
    return p


@pytest.mark.parametrize("spelling", ["{legacy}/../step2/{name}", "{legacy}/sub/../{name}"])
def test_a_legacy_path_spelled_with_dotdot_never_stages_the_stale_copy(site, spelling):
    """Under an alias prefix but not aliasable (".." inside): never hashed
    or staged (the coordinator's preload copy may be stale); left as given."""
    legacy, policy, node = site.legacy, site.policy, site.node
    (legacy / "sub").mkdir()
    name = "train_history.json"
    arg = spelling.format(legacy=legacy, name=name)
    jobs = [Job(f"t{i}", "w.py", [arg, str(i)], f"out{i}.json") for i in range(3)]
    p = _start(policy, [node], jobs)
    new = p.coordinator_job_args(node=node, job=jobs[0])
    sent = new[0] if new else arg
    assert Path(sent).read_bytes() != (legacy / name).read_bytes(), \
        f"job sent {sent!r}, which holds the STALE preload copy"




def test_dates_and_ratios_are_not_missing_inputs(tmp_path):
    jobs = [{"job_id": "a", "script": "w.py", "expected_output": "results/x.json", "timeout": 1,
             "args": ["--date", "2024/01/02", "--ratio", "3/4", "--when", "12:30/2"]}]
    assert discover(jobs, InputsPolicy(), str(tmp_path)).missing == {}


def test_a_coordinator_node_with_an_empty_user_name_is_staged(cluster, tmp_path, monkeypatch):
    """The users' coordinators build nodes with `username or ""` and ssh to
    the bare host name then: "" means no user name, not a refused one."""
    monkeypatch.setattr(sys, "argv", ["scripts_coordinator.py"])
    monkeypatch.chdir(tmp_path)
    sp = tmp_path / "ssd"
    sp.mkdir()
    (sp / "train_history.json").write_text(json.dumps(list(range(1000))))
    policy = make_policy(cluster, sp)
    node = NodeConfig("rig-a", "", 1, "cpu", str(sp), "python3", 2)  # what ScriptsCoordinator builds
    jobs = [Job(f"t{i}", "w.py", [str(sp / "train_history.json"), str(i)], f"o{i}.json") for i in range(2)]
    p = PrngCachePlugin(policy)
    p.coordinator_run_start(run_id="r", nodes=[node], jobs=jobs, assignments={"rig-a": jobs})
    rep = p.coordinator_run_end(run_id="r", results={})
    assert rep["nodes"]["rig-a"]["status"] == "ok", rep["nodes"]["rig-a"]
