"""The demo recipes carry the step budgets and cadence they document (``evaclip train demo-teacher`` alone
must train the published budget, not TrainConfig's defaults)."""
import pytest

from evaclip_demo.recipes import (MIM_STEPS, STUDENT_STEPS, TEACHER_STEPS, VIDEO_LR, VIDEO_SHARE, VIDEO_STEPS,
                                  demo_mim, demo_student, demo_teacher, demo_video, demo_video_images)


def test_each_recipe_sets_its_budget_and_cadence():
    for recipe, steps in ((demo_teacher, TEACHER_STEPS), (demo_mim, MIM_STEPS), (demo_student, STUDENT_STEPS),
                          (demo_video, VIDEO_STEPS), (demo_video_images, VIDEO_STEPS)):
        cfg = recipe()
        assert (cfg.steps, cfg.log_every, cfg.checkpoint_every, cfg.precision) == (steps, 10, 0, "fp32"), recipe


def test_the_video_stage_and_its_ablation_differ_only_in_the_clips():
    video, images = demo_video(), demo_video_images()
    assert [(s.name, s.weight) for s in video.data.sources] == [("offline-train", pytest.approx(1 - VIDEO_SHARE)),
                                                                ("useanimations-video", pytest.approx(VIDEO_SHARE))]
    assert [s.name for s in images.data.sources] == ["offline-train"]
    assert video.data.video_frames == 8 and video.optim.lr == images.optim.lr == VIDEO_LR
    video.data.sources, images.data.sources = [], []
    video.out_dir = images.out_dir = ""
    assert video == images  # same steps, lr, batch, init, patch dropout: the ablation isolates the clips
