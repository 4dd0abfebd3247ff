"""The shell commands of the documentation, and the machinery tests/test_docs.py runs them with.

A documented command is one logical line of a fenced ```bash block of DOC_FILES: backslash-continued lines
joined, `# comments` removed (outside quotes), whitespace outside quotes collapsed to one space. `export` lines
are commands too, and they also set the environment of the later commands of the same file (the reader runs
them in one shell), so each command carries the exports that precede it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DOC_FILES = ("README.md", "train/FINETUNING.md", "launch/README.md")
SHELL_FENCES = {"bash", "sh", "shell"}  # ```plain, the run-folder trees and the schema blocks are not commands
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")


# ---- extraction --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DocCommand:
    file: str
    line: int  # of the command's first physical line, 1-based
    text: str
    exports: tuple[str, ...] = ()  # the `export` commands above it in the same file

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def strip_comment(line: str) -> str:
    """`line` without its `# comment`, whitespace outside quotes collapsed. A `#` starts a comment only at the
    start of a word and outside quotes (bash's rule), so `"a # b"`, `'#'`, `x#y` and `$#` are kept."""
    out: list[str] = []
    quote = None
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            out.append(c)
            if c == "\\" and quote == '"' and i + 1 < len(line):
                out.append(line[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c == "\\" and i + 1 < len(line):
            out += [c, line[i + 1]]
            i += 1
        elif c in "'\"":
            quote = c
            out.append(c)
        elif c == "#" and (not out or out[-1] == " "):
            break
        elif c.isspace():
            if out and out[-1] != " ":
                out.append(" ")
        else:
            out.append(c)
        i += 1
    return "".join(out).strip()


def shell_blocks(markdown: str) -> list[tuple[int, list[str]]]:
    """(line number of the block's first line, its lines) for each fenced shell block."""
    blocks, current, fence, start = [], None, None, 0
    for number, line in enumerate(markdown.splitlines(), 1):
        m = _FENCE.match(line)
        if fence is None:
            if m:
                fence, current, start = m.group(1), ([] if m.group(2).lower() in SHELL_FENCES else None), number + 1
        elif m and m.group(1).startswith(fence[0]) and len(m.group(1)) >= len(fence) and not m.group(2):
            if current is not None:
                blocks.append((start, current))
            fence, current = None, None
        elif current is not None:
            current.append(line)
    return blocks


def block_commands(start: int, lines: list[str]) -> list[tuple[int, str]]:
    """(line number, command) for each logical line of a shell block."""
    commands, parts, first = [], [], None
    for number, line in enumerate(lines, start):
        if first is None:
            first = number
        # A trailing backslash continues the line; comments do not continue (bash reads `# ... \` as a comment).
        stripped = line.rstrip()
        if strip_comment(stripped).endswith("\\"):
            parts.append(stripped[:-1])
            continue
        parts.append(stripped)
        text = strip_comment(" ".join(p.strip() for p in parts))
        if text:
            commands.append((first, text))
        parts, first = [], None
    if parts:
        raise ValueError(f"line {first}: the block ends inside a backslash continuation")
    return commands


def documented_commands(repo: Path) -> list[DocCommand]:
    found = []
    for name in DOC_FILES:
        exports: list[str] = []
        for start, lines in shell_blocks((repo / name).read_text()):
            for line, text in block_commands(start, lines):
                found.append(DocCommand(name, line, text, tuple(exports)))
                if text.startswith("export "):
                    exports.append(text)
    return found


# ---- the table's vocabulary ------------------------------------------------------------------------------

RUN, PARSE, SERVER, SKIP = "run", "parse", "server", "skip"


@dataclass(frozen=True)
class Spec:
    """How the test runs one documented command.

    run:    bash -c COMMAND (after `subs`, with `add` appended) in the shared repository copy; rc 0 (or `rc`), then
            `creates` (paths, relative to the copy) exist and `prints` (a regex) is in stdout + stderr.
    parse:  GPU- or hub-only: the launcher's arguments, its accelerate config and the script's own argument
            parsing accept the command; with `offline`, the script fails fast and clearly with HF_HUB_OFFLINE=1.
    server: start it, wait for `prints`, stop it.
    skip:   `why` says why it cannot run in a test.
    """

    mode: str
    why: str = ""
    add: str = ""  # appended to the command: smoke-scale options only
    subs: tuple[tuple[str, str], ...] = ()  # declared replacements: placeholders, launcher options
    creates: tuple[str, ...] = ()
    prints: str = ""
    rc: tuple[int, ...] = (0,)
    offline: bool = False
    needs_shared: bool = False  # reads the shared data folder (../shared/data beside the clone): skipped without it
    slow: bool = False
    timeout: int = 300
    env: tuple[tuple[str, str], ...] = ()  # extra environment (FAKE_SINFO: a fake `sinfo` printing that text)
    xfail: str | None = None  # known broken today (fix in progress elsewhere); strict=False
    check: Callable | None = None  # extra check(result, ctx) after the declared ones
    needs: Callable[[], str | None] | None = None  # returns a reason to skip (e.g. no cluster), or None
    after: str | None = None  # a DOC_FILES name: run once that file's commands ran (it reads their outputs)

    def command(self, text: str, **values: str) -> str:
        """The command as the test runs it: `subs` replaced (every occurrence), `add` appended; {name} in
        either is filled from `values` (a free port, the text fixture)."""
        for old, new in self.subs:
            if old not in text:
                raise AssertionError(f"declared substitution {old!r} is not in the command {text!r}")
            text = text.replace(old, new.format(**values))
        return f"{text} {self.add.format(**values)}".strip()


def lookup(table: dict[str, Spec], text: str) -> tuple[str, Spec] | None:
    """The table entry of a command: its exact text, or a key ending in '*' that is a prefix of it."""
    if text in table:
        return text, table[text]
    prefixes = [k for k in table if k.endswith("*") and text.startswith(k[:-1])]
    if len(prefixes) > 1:
        raise AssertionError(f"several table prefixes match {text!r}: {prefixes}")
    return (prefixes[0], table[prefixes[0]]) if prefixes else None


def run_order(commands: list[DocCommand], table: dict[str, Spec]) -> list[DocCommand]:
    """Documented order, except that a command whose Spec says `after=FILE` waits until FILE's commands ran."""
    ordered, waiting = [], {}
    for name in DOC_FILES:
        for c in commands:
            if c.file != name:
                continue
            found = lookup(table, c.text)
            after = found[1].after if found else None
            if after and after != name and after not in {o.file for o in ordered}:
                waiting.setdefault(after, []).append(c)
            else:
                ordered.append(c)
        ordered += waiting.pop(name, [])
    return ordered + [c for rest in waiting.values() for c in rest]


def key_matches(key: str, text: str) -> bool:
    return text == key or (key.endswith("*") and text.startswith(key[:-1]))


# ---- running ---------------------------------------------------------------------------------------------

@dataclass
class Result:
    script: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    cwd: Path = field(default=Path("."))

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def report(self, why: str = "") -> str:
        return (f"{why}\ncommand (bash, in {self.cwd}):\n  {self.script}\nrc {self.returncode} after "
                f"{self.seconds:.1f} s\n--- stdout (last 3000) ---\n{self.stdout[-3000:]}\n"
                f"--- stderr (last 3000) ---\n{self.stderr[-3000:]}")


def bash_script(command: str, exports: tuple[str, ...]) -> str:
    # The exports as written, then the command: what a reader pasting the file's blocks into one shell runs.
    return "\n".join([*exports, command])


def run_bash(command: str, exports: tuple[str, ...], cwd: Path, env: dict, timeout: int) -> Result:
    script = bash_script(command, exports)
    started = time.monotonic()
    try:
        proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        code = -9
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        err += f"\n[test_docs] killed after the {timeout} s timeout"
    return Result(script, code, out, err, time.monotonic() - started, cwd)


def bash_words(command: str, exports: tuple[str, ...], cwd: Path, env: dict) -> list[str]:
    """The argv bash builds from the command (variables, $(...) and quotes expanded as a shell does)."""
    script = bash_script(f"set -- {command}\nprintf '%s\\0' \"$@\"", exports)
    proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"bash could not expand {command!r}: {proc.stderr[-3000:]}"
    return proc.stdout.split("\0")[:-1]


def run_server(command: str, exports: tuple[str, ...], cwd: Path, env: dict, ready: str, timeout: int,
               probe: Callable[[], None] | None = None) -> Result:
    """Start a long-running command, wait until its output matches `ready`, call `probe` while it is up, then stop
    it (its whole process group). rc 0 when it got ready and the probe passed."""
    script = bash_script(f"exec {command}", exports)
    log = cwd.parent / f"server-{time.monotonic_ns()}.log"
    started = time.monotonic()
    with open(log, "w") as sink:
        proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    problem = ""
    try:
        while time.monotonic() - started < timeout and proc.poll() is None and not re.search(ready, log.read_text()):
            time.sleep(0.3)
        if proc.poll() is not None:
            problem = f"exited with {proc.returncode} before it was ready"
        elif not re.search(ready, log.read_text()):
            problem = f"printed nothing matching {ready!r} within {timeout} s"
        elif probe is not None:
            try:
                probe()
            except Exception as err:  # reported with the server's output
                problem = f"probe failed while it was up: {type(err).__name__}: {err}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    seen = log.read_text()
    log.unlink(missing_ok=True)
    return Result(script, 1 if problem else 0, seen, problem, time.monotonic() - started, cwd)


def copy_worktree(repo: Path, dest: Path) -> Path:
    """The working tree's files (tracked and untracked, not ignored) copied to `dest`: what a clone would hold,
    plus the edits in progress."""
    listing = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, capture_output=True,
                             text=True, check=True).stdout
    for name in filter(None, listing.split("\0")):
        source = repo / name
        if source.is_file():  # listed but deleted in the working tree: gone from the copy too
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest




# ---- parse: what a GPU- or hub-only command would do before its first step -------------------------------

TRAINING_SCRIPTS = {"train/pretrain.py": "train.pretrain",
                    "train/finetune_classification.py": "train.finetune_classification",
                    "train/finetune_qa.py": "train.finetune_qa"}


@contextlib.contextmanager
def working_directory(path: Path, environ: dict | None = None):
    before_cwd, before_env = Path.cwd(), dict(os.environ)
    os.chdir(path)
    os.environ.update(environ or {})
    try:
        yield
    finally:
        os.chdir(before_cwd)
        os.environ.clear()
        os.environ.update(before_env)


def _no_exit(what: str, call: Callable):
    """argparse reports errors with SystemExit(2) and the message on stderr: turn that into a test failure."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return call()
    except SystemExit as e:
        raise AssertionError(f"{what} refused the arguments (exit {e.code}): {stderr.getvalue().strip()}") from None


def check_launcher(launch_args: list[str], cwd: Path) -> dict:
    """`accelerate launch LAUNCH_ARGS`: accelerate's own option parsing and validation (config file merged in), the
    environment its launcher would give the training processes, and for DeepSpeed the DeepSpeedPlugin those
    processes build from that environment (where accelerate refuses e.g. `mixed_precision` beside a
    deepspeed_config_file). Nothing is started. Uses accelerate's launcher internals, as `accelerate launch` does."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import (
        prepare_deepspeed_cmd_env,
        prepare_multi_gpu_env,
        prepare_simple_launcher_cmd_env,
    )

    args = _no_exit("accelerate launch", lambda: launch_command_parser().parse_args(launch_args))
    config = None
    with working_directory(cwd):
        if args.config_file:
            assert Path(args.config_file).is_file(), f"accelerate config {args.config_file} does not exist"
            config = load_config_from_file(args.config_file).to_dict()
        args, defaults, mp_from_config = _validate_launch_command(args)
        if args.use_deepspeed and not args.cpu:  # the branches of accelerate.commands.launch.launch_command
            fields = list(defaults.deepspeed_config.keys()) if defaults else []
            if mp_from_config:
                fields.append("mixed_precision")
            args.deepspeed_fields_from_accelerate_config = ",".join(fields)
            _, env = prepare_deepspeed_cmd_env(args)
        elif args.multi_gpu and not args.cpu:
            env = prepare_multi_gpu_env(args)
        else:
            _, env = prepare_simple_launcher_cmd_env(args)
    accelerate_env = {k: v for k, v in env.items() if k.startswith("ACCELERATE_")}
    if args.use_deepspeed:
        with working_directory(cwd, accelerate_env):
            ds_file = accelerate_env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
            assert ds_file is None or Path(ds_file).is_file(), f"DeepSpeed json {ds_file} does not exist"
            DeepSpeedPlugin()
    return {"script": args.training_script, "module": args.module, "script_args": list(args.training_script_args),
            "config": config, "num_processes": args.num_processes, "env": accelerate_env}


def check_script_args(script: str, module: bool, script_args: list[str], cwd: Path) -> dict:
    """The training script's own parse step (parse_config over its ARGS dataclasses, presets resolved from the
    repository copy) and the hub resources it would load."""
    if not module:  # submit.py's job names the script by absolute path
        script = Path(os.path.relpath((cwd / script).resolve(), cwd.resolve())).as_posix()
    name = script if module else TRAINING_SCRIPTS.get(script)
    assert name in TRAINING_SCRIPTS.values(), f"{script}: not a training script this test knows how to parse"
    mod = importlib.import_module(name)
    from train.common.config import parse_config
    with working_directory(cwd):
        parsed = _no_exit(script, lambda: parse_config(mod.ARGS, script_args, description=mod.__doc__))
    resources = [(n, kind) for n, kind in mod.hub_resources(*parsed) if n]
    return {"script": script, "args": script_args, "parsed": parsed, "hub": resources}


def check_training_command(argv: list[str], cwd: Path) -> dict:
    """`accelerate launch [opts] SCRIPT ARGS`, `python -m accelerate.commands.launch ...` or `python SCRIPT ARGS`."""
    launcher = None
    if argv[:2] == ["accelerate", "launch"]:
        launcher = check_launcher(argv[2:], cwd)
    elif Path(argv[0]).name.startswith("python") and argv[1:3] == ["-m", "accelerate.commands.launch"]:
        launcher = check_launcher(argv[3:], cwd)
    if launcher:
        checked = check_script_args(launcher["script"], launcher["module"], launcher["script_args"], cwd)
    elif Path(argv[0]).name.startswith("python") and argv[1] == "-m":
        checked = check_script_args(argv[2], True, argv[3:], cwd)
    elif Path(argv[0]).name.startswith("python"):
        checked = check_script_args(argv[1], False, argv[2:], cwd)
    else:
        raise AssertionError(f"not a training command: {shlex.join(argv)}")
    checked["launcher"] = launcher
    return checked


def sbatch_node_command(line: str) -> tuple[list[str], dict]:
    """From submit.py's printed sbatch line: the sbatch options, and the `accelerate launch` argv that
    launch/node_launch.sh builds on the first node (rank 0; the address and port are the job's)."""
    argv = shlex.split(line)
    assert argv and argv[0] == "sbatch", f"not an sbatch line: {line!r}"
    options = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)
    options.update({a[2:]: "" for a in argv[1:] if a in ("--requeue",)})
    job = next(i for i, a in enumerate(argv) if a.endswith("slurm_job.sbatch"))
    sep = argv.index("--", job)
    job_opts = dict(zip(argv[job + 1:sep:2], argv[job + 2:sep:2], strict=True))
    nodes, procs = int(options["nodes"]), int(job_opts["--procs_per_node"])
    script, *script_args = argv[sep + 1:]
    launch = ["accelerate", "launch", "--config_file", job_opts["--config_file"], "--num_machines", str(nodes),
              "--machine_rank", "0", "--num_processes", str(nodes * procs), "--main_process_ip", "127.0.0.1",
              "--main_process_port", "20000", script, *script_args, "--output_dir", job_opts["--output_dir"],
              "--resume_from_checkpoint", "latest"]
    return launch, options


def offline_failure(script: str, script_args: list[str], cwd: Path, env: dict, timeout: int = 60) -> Result:
    """The script alone (one process) with the Hub switched off and empty caches: it must stop at once."""
    import sys
    command = shlex.join([sys.executable, script, *script_args])
    return run_bash(command, (), cwd, env, timeout)


# ---- checks named in tests/test_docs.py's table (each gets the Result and the test's Context) ---------------

def minilm_exported(result, ctx):
    (path,) = ctx.expand('"$MINILM"', include_self=True)
    assert (Path(path) / "config.json").is_file(), f"$MINILM={path!r} is not a model folder"


def ddp_run(folder):
    def check(result, ctx):
        replicas = json.loads((ctx.repo / folder / "replica_check.json").read_text())
        assert replicas, "replica_check.json is empty"
        assert "world_size: 2" in (ctx.repo / folder / "config.yaml").read_text(), "not two processes"
    return check


def no_final(folder):
    def check(result, ctx):
        assert not (ctx.repo / folder / "final").exists(), "eval-only mode must not write final/"
    return check


def sbatch(**expected):
    """The sbatch options submit.py printed (--dry-run) include `expected` (name=value, '-' as '_')."""
    def check(result, ctx):
        _, options = sbatch_node_command(result.stdout.strip().splitlines()[-1])
        for name, value in expected.items():
            assert options.get(name.replace("_", "-")) == value, (name, value, options)
    return check


def http_answers(ctx):
    """Called while the server is up: its page answers on the port it was given."""
    with urllib.request.urlopen(f"http://localhost:{ctx.values['port']}/", timeout=20) as page:
        assert page.status == 200, page.status


def slurm_status_consistent(result, ctx):
    if result.returncode == 0:
        assert "debug" in result.stdout, "status printed no sinfo partition"
    else:
        assert "not up" in result.output
        assert not os.environ.get("REQUIRE_SLURM"), "REQUIRE_SLURM is set but the local cluster is not up"


def cluster_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def start_only_if_up():
    # `start` installs packages (apt-get, root) and starts daemons: in a test only where the cluster is already up
    # (then it is a quick no-op; CI's .ci/run started it) or REQUIRE_SLURM asks for it.
    if cluster_up() or os.environ.get("REQUIRE_SLURM"):
        return None
    return "the local SLURM cluster is not up; `start` installs packages as root: not run from a test"


def cluster_required() -> str | None:
    if cluster_up():
        return None
    if os.environ.get("REQUIRE_SLURM"):
        raise AssertionError("REQUIRE_SLURM is set but the local SLURM cluster is not up")
    return "the local SLURM cluster is not up (bash launch/local_slurm.sh start)"


def slurm_job_finishes(output_dir: str):
    """submit.py printed the job id: the job runs to the end on the cluster and leaves its results."""
    def check(result, ctx):
        from tests.slurm_helpers.cluster import wait_for_job
        job_id = result.stdout.strip().splitlines()[-1].strip()
        info = wait_for_job(job_id, timeout=600)
        folder = ctx.repo / output_dir
        logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in (folder / "logs").glob("*.out"))
        assert (folder / "eval_results.json").is_file() and (folder / "final").is_dir(), (info, logs)
    return check
