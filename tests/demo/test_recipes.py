"""The demo recipes carry the step budgets and cadence they document (``evaclip train demo-teacher`` alone
must train the published budget, not TrainConfig's defaults)."""
from evaclip_demo.recipes import MIM_STEPS, STUDENT_STEPS, TEACHER_STEPS, demo_mim, demo_student, demo_teacher


def test_each_recipe_sets_its_budget_and_cadence():
    for recipe, steps in ((demo_teacher, TEACHER_STEPS), (demo_mim, MIM_STEPS), (demo_student, STUDENT_STEPS)):
        cfg = recipe()
        assert (cfg.steps, cfg.log_every, cfg.checkpoint_every, cfg.precision) == (steps, 10, 0, "fp32"), recipe
