"""`evaclip plan` end to end through the CLI dispatcher."""
import json

from evaclip.cli.main import main
from evaclip.plan.planner import PlanRequest, make_plan

PAPER_18B = ["plan", "EVA-CLIP-18B", "--gpus", "360", "--gpu-memory", "40", "--global-batch", "108k",
             "--patch-dropout", "0.5", "--grad-checkpointing", "--peak-tflops", "312", "--mfu", "0.4",
             "--samples", "6e9"]


def test_text_report(capsys):
    assert main(PAPER_18B) == 0
    out = capsys.readouterr().out
    plan = make_plan(PlanRequest("EVA-CLIP-18B", 360, 40, 108_000, 0.5, True, 312, 0.4, 6e9))
    rows = {line.split("  ")[0]: line for line in out.splitlines()}
    assert "does not fit" in rows["DDP"] and "does not fit" in rows["ZeRO-2"]
    assert rows["FSDP full shard"].rstrip().endswith(f"fits ({plan.scheme('fsdp').batch_bytes / 1e9:.2f} GB)")
    assert f"{plan.days:.1f} days" in out and "9.22 TFLOP" in out and "4.66 TFLOP" in out
    assert "293.21 GB" in out and "0.81 GB per GPU" in out


def test_json_report(capsys):
    assert main(PAPER_18B + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["request"]["global_batch"] == 108_000
    assert [r["fits"] for r in data["schemes"]] == [False, False, False, True]
    assert abs(data["days"] - 21.6) < 0.1


def test_bad_input_is_one_line_with_exit_code_2(capsys):
    assert main(["plan", "EVA-CLIP-18B", "--gpus", "8", "--gpu-memory", "80", "--mfu", "0.4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--peak-tflops" in err
