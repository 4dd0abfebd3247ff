"""Rebuild the embedded sample corpus (data/sample/) from the full local copies in ../shared/data.

    python data/sample/build_sample.py              # writes the sample files next to this script
    python data/sample/build_sample.py --check      # rebuilds in memory, compares byte for byte, exit 1 on a difference
    python data/sample/build_sample.py --source DIR --out DIR

Deterministic: fixed line ranges, strides and article titles (the constants below), no randomness. The sources are
checked against the sha256 of ../shared/data/SOURCES.md first, so a different copy of a source cannot slip in. What
is taken, and why, is in SOURCES.md next to this script.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "data"

# sha256 of the source files, as listed in ../shared/data/SOURCES.md.
SOURCE_SHA256 = {
    "wikitext-2-raw/wiki.test.raw": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
    "sst/trainDevTestTrees_PTB/trees/train.txt": "e2f3f41b0b1e6d4dddc0effe3bfc2d27ed8928079aa9a03d652311614fc5feb7",
    "sst/trainDevTestTrees_PTB/trees/dev.txt": "0e9336aed6e4730e19f58d00a77b3f0297efdb755f7b5e598c98a05e3f97ea40",
    "sst/trainDevTestTrees_PTB/trees/test.txt": "6e54806dee95cf80cd918e7dfb3f6770f6df24bf826f289a4d1f709e1c8f6761",
    "squad/dev-v1.1.json": "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9",
    "squad/dev-v2.0-sample-5articles.json": "db71d0a19c3f656b1ebefafce642b828cfab269f0d906312dfb0efdc7173b31a",
}

# WikiText-2 raw: 1-based, inclusive line ranges of wiki.test.raw: one blank " " line (as the file itself starts),
# then WHOLE articles, each from its ` = Title = ` heading to the blank line before the next heading.
WIKITEXT_TRAIN_LINES = (1, 2093)   # the leading " " + 27 articles, Robert Boulter .. Brock Lesnar
WIKITEXT_TEST_LINES = (2159, 2342)  # " " + 4 articles, The Snowmen .. QuackShot
# SST PTB trees: every k-th tree (lines 1, 1+k, 1+2k, ...). The official files list the positive sentences first
# and the negative ones after, so the first N lines would be nearly all positive; a stride keeps all 5 classes.
SST_STRIDE = {"train": 10, "dev": 5, "test": 10}
# SQuAD: whole articles, in the order of the source file, with the official ids and JSON formatting. The v1.1
# sample trains on its first 3 articles and evaluates on the 4th (--train_articles 3); the v2.0 sample is that 4th
# article's v2.0 version (with its unanswerable questions), so the v1.1 model is evaluated on v2.0 held-out text.
SQUAD_V1_TITLES = ("Normans", "Southern_California", "Sky_(United_Kingdom)", "Victoria_(Australia)")
SQUAD_V2_TITLES = ("Victoria_(Australia)",)

# Output path (relative to the sample folder) -> source path (relative to the source folder).
OUTPUTS = {
    "wikitext-2-raw/sample-train.raw": "wikitext-2-raw/wiki.test.raw",
    "wikitext-2-raw/sample-test.raw": "wikitext-2-raw/wiki.test.raw",
    "sst/trees/train.txt": "sst/trainDevTestTrees_PTB/trees/train.txt",
    "sst/trees/dev.txt": "sst/trainDevTestTrees_PTB/trees/dev.txt",
    "sst/trees/test.txt": "sst/trainDevTestTrees_PTB/trees/test.txt",
    "squad/sample-v1.1.json": "squad/dev-v1.1.json",
    "squad/sample-v2.0.json": "squad/dev-v2.0-sample-5articles.json",
}


class SampleError(RuntimeError):
    pass


def read_source(source: Path, name: str) -> bytes:
    path = source / name
    if not path.is_file():
        raise SampleError(f"{path}: no such file (pass --source DIR, a folder laid out like ../shared/data)")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SOURCE_SHA256[name]:
        raise SampleError(f"{path}: sha256 {digest} is not the one in shared/data/SOURCES.md; use that copy")
    return data


def line_range(text: str, first: int, last: int) -> str:
    """Lines first..last (1-based, inclusive), each with its newline."""
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    if not 1 <= first <= last <= len(lines):
        raise SampleError(f"line range {first}..{last} is outside the file ({len(lines)} lines)")
    return "\n".join(lines[first - 1: last]) + "\n"


def wikitext_part(text: str, first: int, last: int) -> str:
    part = line_range(text, first, last)
    lines = part.split("\n")
    # Whole articles only: starts on a blank line followed by a top-level heading, and the next line is a blank
    # line followed by a heading (or the end of the file).
    if lines[0] != " " or not is_title(lines[1]):
        raise SampleError(f"wikitext lines {first}..{last} do not start at an article")
    rest = text.split("\n")[last:]
    if rest and rest[0] and not is_title(rest[0]):
        raise SampleError(f"wikitext lines {first}..{last} cut an article (line {last + 1} is no heading)")
    return part


def is_title(line: str) -> bool:
    return line.startswith(" = ") and line.endswith(" = ") and not line.startswith(" = = ")


def sst_part(text: str, stride: int) -> str:
    trees = [line for line in text.split("\n") if line]
    return "".join(tree + "\n" for tree in trees[::stride])


def squad_part(raw: bytes, titles: tuple[str, ...]) -> str:
    data = json.loads(raw)
    if json.dumps(data) != raw.decode("utf-8"):  # the official files are exactly json.dumps' default output
        raise SampleError("the SQuAD source is not in the official formatting; the sample would not match it")
    articles = {article["title"]: article for article in data["data"]}
    missing = [t for t in titles if t not in articles]
    if missing:
        raise SampleError(f"SQuAD source has no article(s) {missing}")
    order = [a["title"] for a in data["data"] if a["title"] in titles]
    # Same top-level keys, in the same order, as the official file ("data"/"version" or "version"/"data").
    sample = {key: ([articles[t] for t in order] if key == "data" else value) for key, value in data.items()}
    return json.dumps(sample)


def build(source: Path) -> dict[str, bytes]:
    wiki = read_source(source, OUTPUTS["wikitext-2-raw/sample-train.raw"]).decode("utf-8")
    files = {
        "wikitext-2-raw/sample-train.raw": wikitext_part(wiki, *WIKITEXT_TRAIN_LINES),
        "wikitext-2-raw/sample-test.raw": wikitext_part(wiki, *WIKITEXT_TEST_LINES),
        "squad/sample-v1.1.json": squad_part(read_source(source, OUTPUTS["squad/sample-v1.1.json"]), SQUAD_V1_TITLES),
        "squad/sample-v2.0.json": squad_part(read_source(source, OUTPUTS["squad/sample-v2.0.json"]), SQUAD_V2_TITLES),
    }
    for split, stride in SST_STRIDE.items():
        name = f"sst/trees/{split}.txt"
        files[name] = sst_part(read_source(source, OUTPUTS[name]).decode("utf-8"), stride)
    return {name: files[name].encode("utf-8") for name in OUTPUTS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help=f"default {DEFAULT_SOURCE}")
    parser.add_argument("--out", type=Path, default=HERE, help="default: this script's folder")
    parser.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = parser.parse_args(argv)
    try:
        files = build(args.source)
    except SampleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    differ = []
    for name, data in files.items():
        path = args.out / name
        if args.check:
            if not path.is_file() or path.read_bytes() != data:
                differ.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    print("| file | bytes | sha256 |\n|---|---|---|")
    for name, data in files.items():
        print(f"| {name} | {len(data):,} | {hashlib.sha256(data).hexdigest()} |")
    print(f"total {sum(len(d) for d in files.values()):,} bytes")
    if differ:
        print(f"error: {', '.join(differ)} in {args.out} differ from the rebuild; run without --check to rewrite",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
