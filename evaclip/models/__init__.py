"""EVA-CLIP model family: configs, layers, towers, the CLIP wrapper, the factory and checkpoint adapters."""
from evaclip.models.checkpoint import LoadReport, export_state_dict, load_checkpoint, load_state_dict, save_file
from evaclip.models.clip import CLIP
from evaclip.models.config import CLIPConfig, TextConfig, VisionConfig
from evaclip.models.factory import create_model, create_model_and_transforms, get_model_config, get_tokenizer, list_models
from evaclip.models.text import TextTransformer
from evaclip.models.vision import EVAVisionTransformer

__all__ = [
    "CLIP", "CLIPConfig", "VisionConfig", "TextConfig", "EVAVisionTransformer", "TextTransformer",
    "create_model", "create_model_and_transforms", "get_model_config", "get_tokenizer", "list_models",
    "load_checkpoint", "load_state_dict", "export_state_dict", "save_file", "LoadReport",
]
