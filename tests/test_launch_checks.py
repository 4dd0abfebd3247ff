"""The launch checks that turn ENVIRONMENT.md's silent failures into errors."""

from types import SimpleNamespace

import pytest
import torch

from train.common.distributed import LaunchError, check_launch


def fake_accelerator(num_processes=1, mixed_precision="no", device="cpu", distributed_type="NO"):
    from accelerate.utils import DistributedType
    return SimpleNamespace(num_processes=num_processes, mixed_precision=mixed_precision,
                           device=torch.device(device), distributed_type=DistributedType(distributed_type))


def test_processes_that_would_train_independently_are_stopped(monkeypatch):
    # `accelerate launch --multi_gpu --num_processes 2` without a GPU: each process sees a world of 1.
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LaunchError, match="started 2 processes but this one sees a world of 1"):
        check_launch(fake_accelerator(num_processes=1), use_deepspeed=False, max_grad_norm=1.0)
    check_launch(fake_accelerator(num_processes=2, distributed_type="MULTI_CPU"), False, 1.0)


def test_fp16_on_cpu_and_ignored_deepspeed_are_refused(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(LaunchError, match="fp16 on CPU"):
        check_launch(fake_accelerator(mixed_precision="fp16"), False, 1.0)
    with pytest.raises(LaunchError, match="asks for DeepSpeed"):
        check_launch(fake_accelerator(), use_deepspeed=True, max_grad_norm=1.0)


def test_clipping_set_twice_must_agree(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    accelerator = fake_accelerator(distributed_type="DEEPSPEED")
    accelerator.state = SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config={"gradient_clipping": 1.0}))
    with pytest.raises(LaunchError, match="json says 1.0, --max_grad_norm says 0.5"):
        check_launch(accelerator, True, 0.5)
    check_launch(accelerator, True, 1.0)
    accelerator.state.deepspeed_plugin.deepspeed_config = {"gradient_clipping": "auto"}
    check_launch(accelerator, True, 0.5)
    assert accelerator.state.deepspeed_plugin.deepspeed_config["gradient_clipping"] == 0.5


@pytest.mark.slow
@pytest.mark.parametrize("how", ["python_script", "accelerate_script", "accelerate_module"])
def test_the_three_documented_invocations_train_and_export(how, corpus_dir, tmp_path):
    """`python train/pretrain.py`, `accelerate launch train/pretrain.py`, `accelerate launch -m train.pretrain`."""
    import shutil
    import subprocess
    import sys

    from tests.conftest import REPO, launch_env, pretrain_args

    out = tmp_path / how
    args = pretrain_args(corpus_dir, out, "--max_train_steps", "2", "--checkpointing_steps", "none")
    accelerate = ([shutil.which("accelerate"), "launch"] if shutil.which("accelerate")
                  else [sys.executable, "-m", "accelerate.commands.launch"])
    accelerate += ["--config_file", str(REPO / "accelerate_configs" / "cpu.yaml")]
    cmd = {"python_script": [sys.executable, "train/pretrain.py"],
           "accelerate_script": accelerate + ["train/pretrain.py"],
           "accelerate_module": accelerate + ["-m", "train.pretrain"]}[how]
    proc = subprocess.run(cmd + args, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "final" / "model.safetensors").is_file() and (out / "eval_results.json").is_file()
