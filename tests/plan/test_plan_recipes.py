"""`evaclip plan RECIPE`: a training recipe is planned at its model's resolution and its published global batch."""
import dataclasses
import json

from evaclip.models import get_model_config
from evaclip.plan.planner import PlanRequest, format_plan, make_plan


def test_the_8b_plus_recipe_plans_the_released_448px_model():
    by_recipe = make_plan(PlanRequest(model="eva-clip-8b-plus", gpus=384, gpu_memory_gib=40,
                                      grad_checkpointing=True, peak_tflops=312, mfu=0.4))
    by_model = make_plan(PlanRequest(model="EVA-CLIP-8B-448", gpus=384, gpu_memory_gib=40, global_batch=24_576,
                                     grad_checkpointing=True, peak_tflops=312, mfu=0.4, samples=32_552 * 24_576))
    assert by_recipe.request.global_batch == 24_576 and by_recipe.request.samples == 32_552 * 24_576
    assert (by_recipe.params, by_recipe.flops, by_recipe.days) == (by_model.params, by_model.flops, by_model.days)
    assert [dataclasses.astuple(s) for s in by_recipe.schemes] == [dataclasses.astuple(s) for s in by_model.schemes]
    assert format_plan(by_recipe).startswith("eva-clip-8b-plus (EVA-CLIP-8B at 448 px): ")


def test_the_18b_plus_recipe_plans_18b_at_336px(tmp_path):
    cfg = get_model_config("EVA-CLIP-18B")
    cfg.vision_cfg.image_size = 336
    path = tmp_path / "18b-336.json"
    path.write_text(json.dumps(cfg.to_dict()))
    by_recipe = make_plan(PlanRequest(model="eva-clip-18b-plus", gpus=360, gpu_memory_gib=40))
    by_json = make_plan(PlanRequest(model=str(path), gpus=360, gpu_memory_gib=40, global_batch=23_040))
    assert by_recipe.request.global_batch == 23_040 and by_recipe.request.samples is None  # no time asked
    assert (by_recipe.params, by_recipe.flops) == (by_json.params, by_json.flops)
    assert by_recipe.flops.forward > make_plan(PlanRequest(model="eva-clip-18b", gpus=360,
                                                           gpu_memory_gib=40)).flops.forward
    # an explicit global batch wins over the recipe's
    assert make_plan(PlanRequest(model="eva-clip-18b-plus", gpus=360, gpu_memory_gib=40,
                                 global_batch=3_600)).request.global_batch == 3_600
