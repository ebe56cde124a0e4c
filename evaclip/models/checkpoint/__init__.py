"""Checkpoints in every layout EVA-CLIP weights come in, in four parts:

- :mod:`.reading`: files and Hugging Face folders read safely (no pickle that runs code, one-line errors for
  damaged files, shard indexes followed), unwrapped, non-finite weights refused;
- :mod:`.adapters`: one adapter per layout (training, released/official, vision-only MIM, open_clip, the
  Hugging Face port), each converting to evaclip's keys and back; the layout is detected from the keys;
- :mod:`.fit`: fitting a state dict to a model or a tower (:func:`load_checkpoint`, :class:`LoadReport`) and
  the weak-to-strong skip list;
- :mod:`.writing`: safetensors, ``.pt`` and Hugging Face folder output.
"""
from evaclip.models.checkpoint.adapters import (ADAPTERS, StateDict, StateDictAdapter, adapter_for, adapter_named,
                                                export_state_dict, to_training_layout)
from evaclip.models.checkpoint.fit import (MIM_ONLY, TEXT_REINIT, VISION_REINIT, WEAK_TO_STRONG_SKIP, LoadReport,
                                           load_checkpoint, load_pretrained, load_state_dict)
from evaclip.models.checkpoint.reading import (RUN_MODEL_CONFIG, RUN_WEIGHTS, check_finite, read_file,
                                              read_state_dict, unwrap)
from evaclip.models.checkpoint.writing import check_hf_folder, save_file, save_hf_folder, save_torch

__all__ = [
    "RUN_MODEL_CONFIG", "RUN_WEIGHTS",
    "ADAPTERS", "StateDict", "StateDictAdapter", "adapter_for", "adapter_named", "export_state_dict",
    "to_training_layout", "MIM_ONLY", "TEXT_REINIT", "VISION_REINIT", "WEAK_TO_STRONG_SKIP", "LoadReport",
    "load_checkpoint", "load_pretrained", "load_state_dict", "check_finite", "read_file", "read_state_dict",
    "unwrap", "check_hf_folder", "save_file", "save_hf_folder", "save_torch",
]
