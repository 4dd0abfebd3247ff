"""Bad input and output paths: one `error:` line (exit code 2), checked before the slow work, nothing saved lost.

A full disk is simulated in-process (the lowest write raising ENOSPC at a chosen moment) and, where `mount` is
permitted (root), reproduced on a real 700 KiB tmpfs. A read-only location is a read-only tmpfs, or /proc/sys.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port, launch_env, pretrain_args, reset_accelerate_state, run_pretrain
from train.common import run_folder
from train.common.checkpoint import list_checkpoints, validate_checkpoint
from train.common.data.pretraining import DataError, _check_text_file
from train.common.errors import run_main

ENOSPC_FIX = "No space left on device; free space or choose another --output_dir"


@pytest.fixture(autouse=True)
def fresh_log_handler():
    """run_main's log handler writes to the sys.stderr it first saw: under capsys, a stream closed after that test."""
    def drop():
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_ours", False)]:
            root.removeHandler(handler)
    drop()
    yield
    drop()


def cli(main, argv, capsys) -> tuple[int, str]:
    """What `python SCRIPT ARGV` does: exit code and the one `error:` line (asserted to be the only one)."""
    reset_accelerate_state()
    capsys.readouterr()
    code = run_main(lambda: main(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) <= 1, lines
    return code, lines[0] if lines else ""


def cli_pretrain(argv, capsys) -> tuple[int, str]:
    from train.pretrain import main
    return cli(main, argv, capsys)


@pytest.fixture
def tmpfs(tmp_path):
    """mount(SIZE, ro=False) -> a fresh tmpfs folder, unmounted at the end; skips where mount is not permitted."""
    mounted = []

    def mount(size: str, ro: bool = False) -> Path:
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        options = f"size={size}" + (",ro" if ro else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


# ------------------------------------------------------------------------------------------------ input files


def test_a_directory_as_train_file_says_so_and_names_a_file_in_it(tmp_path):
    (tmp_path / "wikitext-2-raw").mkdir()
    for split in ("train", "valid", "test"):
        (tmp_path / "wikitext-2-raw" / f"wiki.{split}.raw").write_text(" = A = \n text .\n")
    with pytest.raises(DataError) as err:
        _check_text_file(str(tmp_path), "train")
    assert str(err.value) == (f"--train_file {tmp_path}: is a directory; pass a text file (WikiText raw or plain "
                              f"text), e.g. {tmp_path / 'wikitext-2-raw' / 'wiki.train.raw'}")
    with pytest.raises(DataError, match=r"--validation_file .*: is a directory; .*wiki\.valid\.raw$"):
        _check_text_file(str(tmp_path), "validation")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r": is a directory; pass a text file \(WikiText raw or plain text\)$"):
        _check_text_file(str(empty), "test")


def test_an_unreadable_train_file_says_so(tmp_path, monkeypatch):
    # root reads any file whatever its mode: the refusal is simulated where the file is opened
    import train.common.data.pretraining as pd
    path = tmp_path / "train.raw"
    path.write_text("text\n")

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    monkeypatch.setattr(pd, "open", refuse, raising=False)
    with pytest.raises(DataError, match=r"^--train_file .*train\.raw: cannot be read \(Permission denied\); check its "
                                        r"permissions or pass another text file$"):
        _check_text_file(str(path), "train")


def test_fine_tuning_files_that_are_directories(tmp_path):
    from train.common.data.squad import SquadFormatError, load_squad_json
    from train.common.data.sst import SSTFormatError, load_labeled_file, load_sst_ptb_trees
    with pytest.raises(SSTFormatError, match=r"is a directory; pass a \.csv, \.tsv, \.json or \.jsonl file"):
        load_labeled_file(str(tmp_path))
    (tmp_path / "dev-v1.1.json").write_text("{}")
    with pytest.raises(SquadFormatError, match=r"is a directory; pass an official SQuAD JSON file, e\.g\. .*dev-v1"):
        load_squad_json(str(tmp_path))
    with pytest.raises(SSTFormatError, match=r"is a file; give the folder holding train\.txt"):
        load_sst_ptb_trees(str(tmp_path / "dev-v1.1.json"))


# ------------------------------------------------------------------------------------------- output folder: early


def test_output_dir_checks_leave_nothing_behind(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(run_folder.OutputPathError, match=r"afile is a file, not a folder; choose another"):
        run_folder.check_output_path(afile)
    with pytest.raises(run_folder.OutputPathError,
                       match=r"--output_dir .*afile/run/x: .*afile is a file, so no folder can be made under it"):
        run_folder.check_output_path(afile / "run" / "x")
    # /proc/sys refuses new entries even to root (not EROFS, but a real refusal); nothing may be created there
    with pytest.raises(run_folder.OutputPathError, match=r"--output_dir /proc/sys/run: cannot write in /proc/sys: "):
        run_folder.check_output_path(Path("/proc/sys/run"))
    run_folder.check_output_path(tmp_path / "new" / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no folder made, no probe file left


def test_read_only_filesystem_is_refused_before_the_data_is_read(tmpfs, capsys):
    ro = tmpfs("64k", ro=True)
    # a directory as --train_file too: the output folder must be refused first
    code, line = cli_pretrain(["--train_file", str(ro), "--train_tokenizer", "300", "--output_dir", str(ro / "run")],
                              capsys)
    assert code == 2
    assert line == (f"error: --output_dir {ro / 'run'}: cannot write in {ro}: Read-only file system; choose an "
                    "--output_dir on a writable filesystem")


@pytest.mark.slow
@pytest.mark.parametrize("below, expected", [
    ((), "is a file, not a folder; choose another --output_dir"),
    (("run",), "is a file, so no folder can be made under it; choose another --output_dir"),
], ids=["file", "under-a-file"])
def test_bad_output_dir_is_one_line_before_any_work(below, expected, corpus_dir, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    out = tmp_path.joinpath("afile", *below)
    code, line = cli_pretrain(pretrain_args(corpus_dir, out), capsys)
    assert code == 2 and line.startswith(f"error: --output_dir {out}") and line.endswith(expected), line


@pytest.mark.slow
def test_a_failed_start_leaves_no_empty_output_folder(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    code, line = cli_pretrain(["--train_file", str(tmp_path), "--train_tokenizer", "300", "--output_dir", str(out)],
                              capsys)
    assert code == 2 and line == f"error: --train_file {tmp_path}: is a directory; pass a text file (WikiText raw " \
                                 "or plain text)"
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------------- output folder: writes


def test_atomic_write_failure_keeps_the_old_file_and_removes_its_temporary(tmp_path, monkeypatch):
    path = tmp_path / "eval_results.json"
    run_folder.write_json_atomic(path, {"epochs": [1]})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # like a real fsync: no file name
    monkeypatch.setattr(run_folder.os, "fsync", full)
    with pytest.raises(OSError) as err:
        run_folder.write_json_atomic(path, {"epochs": [1, 2]})
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
    assert json.loads(path.read_text()) == {"epochs": [1]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval_results.json"]


def test_run_main_one_line_for_write_errors_traceback_for_others(tmp_path, capsys):
    run_folder.forget_output_dirs()

    def failing(err):
        def main():
            run_folder.check_output_path(tmp_path)
            raise err
        return main
    code = run_main(failing(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics.jsonl"))))
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: cannot write {tmp_path / 'metrics.jsonl'}: {ENOSPC_FIX}"
    code = run_main(failing(IsADirectoryError(errno.EISDIR, "Is a directory", str(tmp_path / "config.yaml"))))
    assert code == 2 and "a folder is in the way there; remove it or choose another --output_dir" in \
        capsys.readouterr().err
    # safetensors does not raise OSError
    code = run_main(failing(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")))
    assert code == 2 and capsys.readouterr().err.strip() == f"error: cannot write under {tmp_path}: {ENOSPC_FIX}"
    # elsewhere, EACCES may be a read: traceback kept; so for errors that are not about writing
    with pytest.raises(PermissionError):
        run_main(failing(PermissionError(errno.EACCES, "Permission denied", "/somewhere/else")))
    with pytest.raises(FileNotFoundError):
        run_main(failing(FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "x"))))
    # a full disk outside the run folder (a cache) is one line too, without the --output_dir advice
    code = run_main(failing(OSError(errno.ENOSPC, "No space left on device", "/cache/x.arrow")))
    assert code == 2 and capsys.readouterr().err.strip() == \
        "error: cannot write /cache/x.arrow: No space left on device; free space there"


def fail_second_checkpoint(monkeypatch):
    """accelerator.save_state writes part of the second checkpoint, then the disk is full."""
    from accelerate import Accelerator
    original, calls = Accelerator.save_state, {"n": 0}

    def save_state(self, output_dir=None, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(output_dir) / "optimizer.bin"))
        return original(self, output_dir, **kwargs)
    monkeypatch.setattr(Accelerator, "save_state", save_state)


def assert_nothing_saved_lost(out: Path, steps: list[int]):
    checkpoints = list_checkpoints(out / "checkpoints")
    assert sorted(validate_checkpoint(c)["step"] for c in checkpoints) == steps
    assert not list(out.glob("checkpoints/.tmp-*")) and not list(out.glob(".tmp-*")) and not list(out.glob(".*.tmp"))
    json.loads((out / "eval_results.json").read_text())
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def test_a_half_written_checkpoint_is_never_taken_as_complete(tmp_path):
    """What a kill -9 during a save leaves (no clean-up ran): resume skips it."""
    from train.common.checkpoint import resume_candidates
    half = tmp_path / "checkpoints" / ".tmp-step_000008"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"\0" * 10)
    assert list_checkpoints(tmp_path / "checkpoints") == [] and resume_candidates(tmp_path, "latest") == []
    run_folder.forget_output_dirs()
    run_folder.check_output_path(tmp_path)
    run_folder.discard_failed_writes()  # what run_main does after a failed write
    assert not half.exists() and tmp_path.is_dir()


STEPS = ("--max_train_steps", "8", "--checkpointing_steps", "4", "--eval_steps", "4", "--keep_last_n", "0")


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_keeps_the_earlier_one_resumable(corpus_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    fail_second_checkpoint(monkeypatch)
    code, line = cli_pretrain(pretrain_args(corpus_dir, out, *STEPS), capsys)
    assert code == 2
    assert line == f"error: cannot write {out}/checkpoints/.tmp-step_000008/optimizer.bin: {ENOSPC_FIX}"
    assert_nothing_saved_lost(out, [4])
    assert [e["step"] for e in json.loads((out / "eval_results.json").read_text())["epochs"]] == [4, 8]
    monkeypatch.undo()
    assert run_pretrain(pretrain_args(corpus_dir, out, *STEPS, "--resume_from_checkpoint", "latest")) == 0
    assert (out / "final" / "model.safetensors").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["resumed_from_step"] == 4


class HalfWritten:
    """A file whose write stops half-way, as on a full disk."""

    def __init__(self, f):
        self.f = f

    def write(self, text):
        self.f.write(text[:len(text) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # f.write names no file

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fail_nth_open(monkeypatch, name: str, n: int):
    """The n-th file named `name` that run_folder opens is cut short by a full disk."""
    real_open, calls = open, {"n": 0}

    def fake_open(file, *args, **kwargs):
        f = real_open(file, *args, **kwargs)
        if Path(file).name == name:
            calls["n"] += 1
            if calls["n"] == n:
                return HalfWritten(f)
        return f
    monkeypatch.setattr(run_folder, "open", fake_open, raising=False)


@pytest.mark.slow
def test_disk_full_writing_eval_results_keeps_the_previous_file(corpus_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    fail_nth_open(monkeypatch, ".eval_results.json.tmp", 2)
    code, line = cli_pretrain(pretrain_args(corpus_dir, out, *STEPS), capsys)
    assert code == 2 and line == f"error: cannot write {out / 'eval_results.json'}: {ENOSPC_FIX}"
    assert_nothing_saved_lost(out, [4])
    assert [e["step"] for e in json.loads((out / "eval_results.json").read_text())["epochs"]] == [4]


@pytest.mark.slow
def test_disk_full_appending_metrics_leaves_no_torn_line(corpus_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    fail_nth_open(monkeypatch, "metrics.jsonl", 6)  # the 6th line, after the checkpoint at step 4
    code, line = cli_pretrain(pretrain_args(corpus_dir, out, *STEPS, "--logging_steps", "1"), capsys)
    assert code == 2 and line == f"error: cannot write {out / 'metrics.jsonl'}: {ENOSPC_FIX}"
    assert_nothing_saved_lost(out, [4])
    steps = [json.loads(record)["step"] for record in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 4]


def test_metrics_append_failure_truncates_the_torn_line(tmp_path, monkeypatch):
    class Acc:
        is_main_process = True

        def log(self, *args, **kwargs):
            pass
    logger = run_folder.MetricsLogger(Acc(), tmp_path, None)
    logger.log({"step": 1, "loss": 1.0}, "train")
    fail_nth_open(monkeypatch, "metrics.jsonl", 1)
    with pytest.raises(OSError) as err:
        logger.log({"step": 2, "loss": 0.5}, "train")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "metrics.jsonl")
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'


@pytest.mark.slow
def test_disk_full_during_the_final_export(corpus_dir, tmp_path, monkeypatch, capsys):
    from transformers import PreTrainedModel
    out = tmp_path / "run"

    class SafetensorError(Exception):  # what safetensors raises: not an OSError
        pass

    def save_pretrained(self, folder, **kwargs):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"\0" * 1000)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_pretrained)
    code, line = cli_pretrain(pretrain_args(corpus_dir, out, *STEPS), capsys)
    assert code == 2 and line == f"error: cannot write {out / 'final'}: {ENOSPC_FIX}"
    assert_nothing_saved_lost(out, [4, 8])
    assert not (out / "final").exists()
    assert json.loads((out / "eval_results.json").read_text())["test"] is not None


def test_writers_that_do_not_raise_oserror_on_a_real_full_disk(tmpfs, tmp_path):
    import torch
    from safetensors.torch import save_file
    small = tmpfs("64k")
    big = torch.zeros(100_000)
    for save in (lambda: torch.save({"t": big}, small / "optimizer.bin"),  # RuntimeError: "unexpected pos ..."
                 lambda: save_file({"t": big}, str(small / "model.safetensors"))):  # SafetensorError: "os error 28"
        with pytest.raises(Exception) as err:
            save()
        assert not isinstance(err.value, OSError)
        failure = run_folder.write_failure(err.value, small)
        assert failure is not None and failure.errno == errno.ENOSPC, repr(err.value)
        for name in ("optimizer.bin", "model.safetensors"):
            (small / name).unlink(missing_ok=True)
    # the same error where there is room (this test's folder on the main disk): not called a full disk
    assert run_folder.write_failure(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos"),
                                    tmp_path) is None


@pytest.mark.slow
def test_a_real_full_disk(corpus_dir, tmp_path, tmpfs, capsys):
    """700 KiB hold the first checkpoint (about 450 KB) but not the second: torch.save fails with a RuntimeError
    that does not say why; the run must still end on one line, and the first checkpoint must resume elsewhere."""
    import shutil
    small = tmpfs("700k")
    out = small / "run"
    code, line = cli_pretrain(pretrain_args(corpus_dir, out, *STEPS), capsys)
    assert code == 2 and line == f"error: cannot write under {out}: {ENOSPC_FIX}"
    assert_nothing_saved_lost(out, [4])
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    argv = pretrain_args(corpus_dir, moved, *STEPS, "--resume_from_checkpoint", "latest")
    assert run_pretrain(argv) == 0 and (moved / "final" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------------ launchers


def test_torchelastic_error_file_is_what_the_root_cause_section_shows(tmp_path, monkeypatch, capsys):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from train.common.config import ConfigError
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))

    def main():
        raise ConfigError("--learning_rate must be > 0")
    assert run_main(main) == 2
    ours = ProcessFailure(local_rank=0, pid=1, exitcode=2, error_file=str(error_file))
    peer = ProcessFailure(local_rank=1, pid=2, exitcode=1, error_file=str(tmp_path / "absent.json"))
    report = ChildFailedError("train/pretrain.py", {1: peer, 0: ours}).format_msg()
    root = report.split("Root Cause")[1]
    assert "traceback : error: --learning_rate must be > 0" in root and "rank      : 0" in root


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_show_our_line_as_the_root_cause(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "accelerate_configs" / "cpu_ddp.yaml"), "--main_process_port", str(free_port()),
           str(REPO / "train" / "pretrain.py"), "--train_file", str(tmp_path), "--train_tokenizer", "300",
           "--output_dir", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    root = proc.stderr.split("Root Cause (first observed failure):")[-1]
    assert f"traceback : error: --train_file {tmp_path}: is a directory; pass a text file" in root, proc.stderr[-4000:]
    assert "To enable traceback" not in root
    # the other rank, stopped in a collective by the first one's exit, says so in one line (or is stopped by the
    # launcher first) instead of a traceback
    assert "[rank1]: Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("quiet", [False, True], ids=["plain", "quiet"])
def test_one_process_launcher(quiet, tmp_path):
    """accelerate's simple launcher raises CalledProcessError after our line (exit code 1); the note says so,
    except under `accelerate launch --quiet`, which prints no traceback."""
    config = tmp_path / "one.yaml"  # one process, no torchrun agent
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nnum_processes: 1\n"
                      "num_machines: 1\nmixed_precision: 'no'\nuse_cpu: true\n")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), *(["--quiet"] * quiet),
           str(REPO / "train" / "pretrain.py"), "--train_file", str(tmp_path), "--train_tokenizer", "300",
           "--output_dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1  # the launcher's own exit code, whatever ours (2) was
    lines = proc.stderr.strip().splitlines()
    ours = next(i for i, line in enumerate(lines) if line.startswith("error: --train_file"))
    if quiet:
        assert ours == len(lines) - 1 and "Traceback" not in proc.stderr
    else:
        assert lines[ours + 1].startswith("note: accelerate launch reports this exit (status 2)")
        assert lines[-1].endswith("returned non-zero exit status 2.")
    assert not (tmp_path / "run").exists()
