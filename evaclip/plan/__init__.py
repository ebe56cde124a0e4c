"""Planning EVA-CLIP training at scale: parameters, FLOPs, memory per GPU, time, and simulated sharding.

Everything here works from the model config alone (no weights, no GPU): ``evaclip plan`` on the command
line, :func:`make_plan` in Python. :mod:`evaclip.plan.simulate` cross-checks the sharded sizes by applying
evaclip's real FSDP2 wrapping to a meta-device model under a fake process group.
"""
from evaclip.models.flops import Flops, model_flops, register_cpu_attention_flops
from evaclip.plan.memory import SCHEMES, Activations, StateBytes, model_activations, state_bytes
from evaclip.plan.params import ModelParams, model_params
from evaclip.plan.planner import Plan, PlanRequest, format_plan, make_plan

__all__ = [
    "Flops", "model_flops", "register_cpu_attention_flops", "SCHEMES", "Activations", "StateBytes",
    "model_activations", "state_bytes", "ModelParams", "model_params", "Plan", "PlanRequest", "format_plan",
    "make_plan",
]
