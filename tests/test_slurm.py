"""SLURM jobs on the local cluster (bash launch/local_slurm.sh start): submission through launch/submit.py,
one srun task per node computing its machine rank, and the preemption protocol USR1 -> checkpoint ->
PREEMPTED -> requeue -> resume. Skipped when no cluster answers, unless REQUIRE_SLURM is set (then failed).

The first tests use tests/slurm_helpers/fake_train.py (no model) so they test the shell side alone; the last
ones run train/pretrain.py with the smoke preset.
"""

import json
import subprocess
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.slurm_helpers.cluster import (
    DDP_CPU_CONFIG,
    FAKE_TRAIN,
    REPO,
    SINGLE_PROCESS_CONFIG,
    job_info,
    read_events,
    read_log,
    require_cluster,
    submit,
    wait_for,
    wait_for_job,
)
from tests.slurm_helpers.pretrain_fixture import MODEL, write_corpus, write_preset, write_tokenizer

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    require_cluster()


@pytest.fixture
def configs(tmp_path):
    single, ddp = tmp_path / "single.yaml", tmp_path / "ddp_cpu.yaml"
    single.write_text(SINGLE_PROCESS_CONFIG)
    ddp.write_text(DDP_CPU_CONFIG)
    return {"single": single, "ddp": ddp}


def test_one_node_job_runs(tmp_path, configs):
    out = tmp_path / "run"
    job = submit(FAKE_TRAIN, out, configs["single"], extra=["--max_train_steps", "3", "--step_seconds", "0.1"])
    info = wait_for_job(job, timeout=120)
    log = read_log(out, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, log)
    assert json.loads((out / "final" / "done.json").read_text()) == {"step": 3}
    start = read_events(out, 0)[0]
    assert start["world_size"] == 1 and start["env"]["SLURMD_NODENAME"] in {"n1", "n2"}
    assert "--resume_from_checkpoint" in start["argv"] and str(out) in start["argv"]
    assert "machine_rank=0 num_machines=1 num_processes=1" in log


def test_two_node_job_ranks_computed_per_node(tmp_path, configs):
    out = tmp_path / "run"
    job = submit(FAKE_TRAIN, out, configs["ddp"], nodes=2, procs_per_node=1,
                 extra=["--max_train_steps", "3", "--step_seconds", "0.1"])
    info = wait_for_job(job, timeout=180)
    log = read_log(out, job)
    assert info["JobState"] == "COMPLETED" and info["NumNodes"] == "2", (info, log)

    starts = {r: read_events(out, r)[0] for r in (0, 1)}
    envs = {r: s["env"] for r, s in starts.items()}
    # Rank 0 runs on the job's first node; each node's step computed its own rank.
    assert (envs[0]["SLURMD_NODENAME"], envs[1]["SLURMD_NODENAME"]) == ("n1", "n2"), envs
    assert (envs[0]["SLURM_NODEID"], envs[1]["SLURM_NODEID"]) == ("0", "1")
    assert (envs[0]["GROUP_RANK"], envs[1]["GROUP_RANK"]) == ("0", "1")  # accelerate's --machine_rank
    assert envs[0]["MASTER_ADDR"] == envs[1]["MASTER_ADDR"] == "127.0.0.1"  # NodeAddr of n1
    assert envs[0]["MASTER_PORT"] == envs[1]["MASTER_PORT"]
    assert all(s["world_size"] == 2 for s in starts.values())
    # A real torch.distributed rendezvous across the two steps: all-reduced sum of ranks.
    for r in (0, 1):
        assert [e["rank_sum"] for e in read_events(out, r) if e["event"] == "rendezvous"] == [1]
    port = envs[0]["MASTER_PORT"]
    for rank, node in ((0, "n1"), (1, "n2")):
        assert (f"[node_launch {node}] machine_rank={rank} num_machines=2 num_processes=2 "
                f"main_process_ip=127.0.0.1 main_process_port={port}") in log, log


@pytest.mark.parametrize("nodes", [1, 2], ids=["one-node-simple-launcher", "two-node-torchrun"])
def test_usr1_checkpoints_requeues_and_resumes(tmp_path, configs, nodes):
    out = tmp_path / "run"
    steps = 40
    job = submit(FAKE_TRAIN, out, configs["ddp" if nodes == 2 else "single"], nodes=nodes, procs_per_node=1,
                 extra=["--max_train_steps", str(steps), "--step_seconds", "0.25"])
    # Signal once every rank is past its second step (handlers installed, rendezvous done).
    wait_for(lambda: all(sum(e["event"] == "step" for e in read_events(out, r)) >= 2 for r in range(nodes)),
             timeout=120, what="the first steps")
    t_signal = time.time()
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)

    info = wait_for_job(job, timeout=240)
    log = read_log(out, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0" and info["Restarts"] == "1", (info, log)
    # Forwarded batch shell -> srun -> node_launch.sh; the launcher (accelerate / torchrun agent) survived
    # USR1 and exited 0 after the training processes saved and stopped.
    assert "got SIGUSR1, forwarding to the job step" in log
    for node in ("n1", "n2")[:nodes]:
        assert f"[node_launch {node}] got SIGUSR1" in log
    assert log.count("launcher exited with status 0") == 2 * nodes, log
    assert "requeued" in log and "preempted: {" in log

    for rank in range(nodes):
        events = read_events(out, rank)
        first_run = [e for e in events if e["restart"] == 0]
        rerun = [e for e in events if e["restart"] == 1]
        preempted = [e for e in first_run if e["event"] == "preempted"]
        assert len(preempted) == 1 and "SIGUSR1" in preempted[0]["signals"], first_run
        saved = preempted[0]["step"]
        assert saved < steps
        # The rerun (SLURM_RESTART_COUNT=1) resumed from the saved step and finished.
        assert rerun[0]["event"] == "start" and rerun[0]["start_step"] == saved, rerun[0]
        rerun_steps = [e["step"] for e in rerun if e["event"] == "step"]
        assert rerun_steps == list(range(saved + 1, steps + 1))
        assert rerun[-1]["event"] == "done"
    assert not (out / "PREEMPTED").exists()
    assert json.loads((out / "final" / "done.json").read_text()) == {"step": steps}

    first_resumed = next(e for e in read_events(out, 0) if e["restart"] == 1 and e["event"] == "step")
    print(f"\n[{nodes} node(s)] USR1 -> first step of the resumed run: {first_resumed['time'] - t_signal:.1f} s")


def test_scancel_saves_but_does_not_requeue(tmp_path, configs):
    """SIGTERM (plain scancel) is forwarded too, so the script checkpoints, but a cancelled job stays cancelled."""
    out = tmp_path / "run"
    job = submit(FAKE_TRAIN, out, configs["single"], extra=["--max_train_steps", "400", "--step_seconds", "0.25"])
    wait_for(lambda: sum(e["event"] == "step" for e in read_events(out, 0)) >= 2, timeout=120, what="the first steps")
    subprocess.run(["scancel", job], check=True)
    wait_for(lambda: "not requeueing" in read_log(out, job), timeout=60, what="the batch shell's decision")
    info = wait_for_job(job, timeout=60)
    assert (info["JobState"], info["Restarts"]) == ("CANCELLED", "0"), info
    marker = json.loads((out / "PREEMPTED").read_text())
    assert marker["signal"] == "SIGTERM"
    assert (out / "checkpoints" / f"step_{marker['step']:06d}" / "state.json").is_file()
    time.sleep(8)  # longer than a requeue would take (cred_expire=5, sched_interval=2)
    assert job_info(job)["Restarts"] == "0" and not any(e["restart"] for e in read_events(out, 0))


# ---- train/pretrain.py through SLURM ------------------------------------------------------------------------

PRETRAIN = REPO / "train" / "pretrain.py"
CPU, CPU_DDP = REPO / "accelerate_configs" / "cpu.yaml", REPO / "accelerate_configs" / "cpu_ddp.yaml"


@pytest.fixture(scope="module")
def pretrain_inputs(tmp_path_factory):
    missing = [p for p in (PRETRAIN, CPU, CPU_DDP, REPO / "train" / "configs" / "smoke.yaml") if not p.is_file()]
    if missing:
        pytest.skip(f"not written yet: {', '.join(str(p.relative_to(REPO)) for p in missing)}")
    folder = tmp_path_factory.mktemp("pretrain_inputs")
    files = write_corpus(folder)
    tokenizer = write_tokenizer(folder / "tokenizer")
    data = ["--train_file", str(files["train"]), "--validation_file", str(files["validation"])]
    return {"folder": folder, "tokenizer": tokenizer, "data": data}


def final_tensors(run):
    return load_file(str(run / "final" / "model.safetensors"))


def assert_same_parameters(a, b, exact=True, atol=0.0):
    ta, tb = final_tensors(a), final_tensors(b)
    assert ta.keys() == tb.keys()
    if exact:
        differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    else:
        differ = [k for k in ta if not torch.allclose(ta[k], tb[k], rtol=0, atol=atol)]
    worst = max((ta[k] - tb[k]).abs().max().item() for k in ta)
    assert not differ, f"{len(differ)} tensors differ between {a} and {b} (max abs diff {worst:g}): {differ[:5]}"
    return worst


def assert_completed(job, run, restarts="0"):
    info = wait_for_job(job, timeout=420)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", restarts), \
        (info, read_log(run, job)[-4000:])


def metrics(run):
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_pretrain_smoke_one_node(tmp_path, pretrain_inputs):
    """The smoke preset as it is (its own trained tokenizer), tiny model and a few steps."""
    run = tmp_path / "run"
    model = [x for k, v in MODEL.items() for x in (f"--{k}", str(v))]
    job = submit(PRETRAIN, run, CPU, preset=REPO / "train" / "configs" / "smoke.yaml",
                 extra=[*pretrain_inputs["data"], *model, "--train_tokenizer", "200", "--max_train_steps", "4",
                        "--per_device_train_batch_size", "8"])
    assert_completed(job, run)
    for name in ("config.yaml", "metrics.jsonl", "eval_results.json", "final/model.safetensors", "final/config.json"):
        assert (run / name).is_file(), name
    assert max(r.get("step", 0) for r in metrics(run)) == 4
    assert "machine_rank=0 num_machines=1 num_processes=1" in read_log(run, job)


def test_pretrain_two_nodes_equals_one_node(tmp_path, pretrain_inputs):
    """Global batch 8: 2 nodes x 1 process x 4, 1 node x 2 processes x 4 (bit-identical: same world size, same
    reduction) and 1 process x 8 (equal up to float summation order). Dropout off: its masks depend on the rank."""
    preset = write_preset(tmp_path / "preset.yaml", pretrain_inputs["tokenizer"], hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, logging_steps=1, checkpointing_steps="none")
    common = [*pretrain_inputs["data"], "--max_train_steps", "8"]
    runs = {name: tmp_path / name for name in ("two_nodes", "one_node_ddp", "one_process")}
    jobs = {
        "two_nodes": submit(PRETRAIN, runs["two_nodes"], CPU_DDP, nodes=2, procs_per_node=1, preset=preset,
                            extra=[*common, "--per_device_train_batch_size", "4"]),
        "one_node_ddp": submit(PRETRAIN, runs["one_node_ddp"], CPU_DDP, procs_per_node=2, preset=preset,
                               extra=[*common, "--per_device_train_batch_size", "4"]),
        "one_process": submit(PRETRAIN, runs["one_process"], CPU, preset=preset,
                              extra=[*common, "--per_device_train_batch_size", "8"]),
    }
    for name, job in jobs.items():
        assert_completed(job, runs[name])
    config = yaml.safe_load((runs["two_nodes"] / "config.yaml").read_text())
    assert (config["distributed"]["num_processes"], config["distributed"]["num_machines"]) == (2, 2), config
    log = read_log(runs["two_nodes"], jobs["two_nodes"])
    assert "[node_launch n1] machine_rank=0 num_machines=2" in log and "[node_launch n2] machine_rank=1" in log
    # Each rank's parameters at the end (fingerprints gathered by the training script): identical on n1 and n2.
    replicas = json.loads((runs["two_nodes"] / "replica_check.json").read_text())
    assert replicas["in_sync"] and len(replicas["fingerprints"]) == 2, replicas
    assert_same_parameters(runs["two_nodes"], runs["one_node_ddp"])
    worst = assert_same_parameters(runs["two_nodes"], runs["one_process"], exact=False, atol=1e-5)
    print(f"\n2 nodes x 1 process vs 1 process x batch 8: max abs parameter difference {worst:g}")


def test_pretrain_usr1_requeue_equals_uninterrupted(tmp_path, pretrain_inputs):
    """USR1 mid-run -> checkpoint at a step boundary -> PREEMPTED -> requeue -> resume: the final parameters
    equal those of the same run left alone (dropout on: the resumed run must redraw the same masks)."""
    preset = write_preset(tmp_path / "preset.yaml", pretrain_inputs["tokenizer"], logging_steps=1)
    extra = [*pretrain_inputs["data"], "--max_train_steps", "60", "--per_device_train_batch_size", "8"]
    run, reference = tmp_path / "preempted", tmp_path / "reference"
    job = submit(PRETRAIN, run, CPU, preset=preset, extra=extra)
    ref_job = submit(PRETRAIN, reference, CPU, preset=preset, extra=extra)
    wait_for(lambda: len([r for r in metrics(run) if "mlm_loss" in r and "split" not in r]) >= 2, timeout=240,
             what="the first logged training steps")
    t_signal = time.time()
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)

    assert_completed(job, run, restarts="1")
    assert_completed(ref_job, reference)
    log = read_log(run, job)
    assert "got SIGUSR1, forwarding to the job step" in log and "requeued" in log, log[-4000:]
    preempted_at = json.loads(log.split("preempted: ", 1)[1].splitlines()[0])
    assert preempted_at["signal"] == "SIGUSR1" and 0 < preempted_at["step"] < 60, preempted_at
    assert not (run / "PREEMPTED").exists()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config.get("resumed_from_step") == preempted_at["step"], config.get("resumed_from_step")
    assert_same_parameters(run, reference)
    print(f"\npretrain preempted at step {preempted_at['step']}; signal -> requeued run finished in "
          f"{time.time() - t_signal:.0f} s")
