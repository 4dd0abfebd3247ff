"""analysis.arms on fabricated pipeline run folders: ours vs random-init control vs majority over seeds (the
numbers, the verdict sentence, a missing seed named), and the table in analysis.report --arms."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from analysis.arms import compare_arms, main, majority_macro_f1


def sst_results(accuracy: float, macro_f1: float) -> dict:
    return {"task": "classification", "completed": True, "label_names": ["0", "1", "2", "3", "4"],
            "majority_baseline": {"dev": 0.26, "test": 0.25},
            "splits": {"test": {"accuracy": accuracy, "macro_f1": macro_f1}}}


def squad_results(em: float, f1: float) -> dict:
    return {"task": "qa", "completed": True, "exact_match": em, "f1": f1}


def write_stage(runs: Path, stage: str, results: dict[int, dict | None]) -> None:
    """RUNS/<stage>/seed_<k>/eval_results.json per seed (None: the seed never finished), and the record of the
    commands as launch/pipeline.py writes it."""
    folders = {seed: runs / stage / f"seed_{seed}" for seed in results}
    for seed, res in results.items():
        folders[seed].mkdir(parents=True)
        if res is not None:
            (folders[seed] / "eval_results.json").write_text(json.dumps(res))
    commands = [["python", "train/x.py", "--output_dir", str(folders[s]), "--seed", str(s)] for s in results]
    (runs / stage / "pipeline_commands.json").write_text(json.dumps(commands))


@pytest.fixture
def runs(tmp_path) -> Path:
    write_stage(tmp_path, "sst", {42: sst_results(0.40, 0.30), 43: sst_results(0.42, 0.33),
                                  44: sst_results(0.44, 0.36)})
    write_stage(tmp_path, "sst_control", {42: sst_results(0.30, 0.20), 43: sst_results(0.31, 0.34),
                                          44: sst_results(0.29, 0.21)})
    write_stage(tmp_path, "squad", {42: squad_results(10.0, 20.0), 43: squad_results(12.0, 22.0),
                                    44: squad_results(11.0, 21.0)})
    write_stage(tmp_path, "squad_control", {42: squad_results(1.0, 5.0), 43: squad_results(2.0, 6.0),
                                            44: None})
    return tmp_path


def test_means_spreads_majority_and_verdicts(runs):
    rows = {row["metric"]: row for row in compare_arms(runs)["rows"]}
    acc = rows["SST-5 test accuracy"]
    assert acc["ours"]["mean"] == pytest.approx(0.42) and acc["ours"]["n"] == 3
    assert acc["ours"]["std"] == pytest.approx(statistics.stdev([0.40, 0.42, 0.44]))  # sample std (n - 1)
    assert (acc["control"]["min"], acc["control"]["max"]) == (0.29, 0.31)
    assert acc["verdict"].startswith("ours beats the control by +0.1200")
    assert acc["majority"] == 0.25
    # control seed 43 (0.34) lies inside ours' range 0.30..0.36: the means differ but the seeds do not separate
    f1 = rows["SST-5 test macro-F1"]
    assert f1["verdict"].startswith("not distinguishable") and "overlap" in f1["verdict"]
    # always predicting a class with a quarter of the test split: F1 2*0.25/1.25 = 0.4 on it, 0 on four others
    assert f1["majority"] == pytest.approx(0.08) == majority_macro_f1(0.25, 5)
    assert rows["SQuAD EM"]["majority"] is None and rows["SQuAD EM"]["ours"]["mean"] == pytest.approx(11.0)


def test_a_missing_seed_is_named_and_one_seed_is_not_judged(runs):
    comparison = compare_arms(runs)
    assert comparison["missing"] == [f"{runs / 'squad_control' / 'seed_44'}: no finished eval_results.json "
                                     "(rerun the pipeline to finish this seed)"]
    em = {row["metric"]: row for row in comparison["rows"]}["SQuAD EM"]
    assert em["control"]["n"] == 2 and em["control"]["mean"] == pytest.approx(1.5)
    for stage in ("sst_control", "squad_control"):
        for seed in (43, 44):
            (runs / stage / f"seed_{seed}" / "eval_results.json").unlink(missing_ok=True)
    acc = {row["metric"]: row for row in compare_arms(runs)["rows"]}["SST-5 test accuracy"]
    assert "one seed on a side: no spread to judge it by" in acc["verdict"]


def test_no_control_stage_says_how_to_get_one(tmp_path):
    write_stage(tmp_path, "sst", {42: sst_results(0.40, 0.30)})
    comparison = compare_arms(tmp_path)
    assert f"{tmp_path / 'sst_control'}: stage not run (launch/pipeline.py --control runs it)" in comparison["missing"]
    assert comparison["rows"][0]["control"] is None and "the control has no finished run" in \
        comparison["rows"][0]["verdict"]


def test_cli_table_and_unreadable_record(runs, tmp_path, capsys):
    assert main([str(runs), "--json", str(tmp_path / "arms.json")]) == 0
    table = capsys.readouterr().out
    assert "| SST-5 test accuracy | 0.4200 ± 0.0200 [0.4000..0.4400] n=3 | 0.3000 ± 0.0100" in table
    assert "| SQuAD F1 |" in table and "| n/a |" in table
    assert json.loads((tmp_path / "arms.json").read_text())["rows"][3]["metric"] == "SQuAD F1"
    (runs / "sst" / "seed_43" / "eval_results.json").write_text(json.dumps({"completed": True, "splits": {}}))
    assert main([str(runs)]) == 2
    assert f"{runs / 'sst' / 'seed_43'}/eval_results.json has no SST-5 test accuracy" in capsys.readouterr().err


def test_report_shows_the_table_and_writes_its_json(runs, tmp_path):
    from analysis.report import write_report
    report, _ = write_report([runs / "sst" / "seed_42"], tmp_path / "report", arms=runs)
    text = report.read_text()
    assert "## Does pretraining help? Ours vs random-init control" in text
    assert "| SST-5 test macro-F1 |" in text and "mean ± sample standard deviation over seeds" in text
    assert json.loads((tmp_path / "report" / "arms.json").read_text())["missing"]
