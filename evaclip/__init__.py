"""evaclip: EVA-CLIP models, training, weak-to-strong scaling and evaluation.

Public API (close to open_clip's)::

    import evaclip
    evaclip.list_models()
    model, preprocess_train, preprocess_val = evaclip.create_model_and_transforms("EVA02-CLIP-B-16", pretrained=PATH)
    tokenizer = evaclip.get_tokenizer("EVA02-CLIP-B-16")
    image_features = model.encode_image(images, normalize=True)
    text_features = model.encode_text(tokenizer(["a photo of a cat"]), normalize=True)
"""
__version__ = "0.1.0"

from evaclip.errors import CheckpointError, ConfigError, DatasetError, EvaclipError, TrainingError

__all__ = [
    "__version__",
    "EvaclipError", "ConfigError", "CheckpointError", "DatasetError", "TrainingError",
    "list_models", "create_model", "create_model_and_transforms", "get_tokenizer", "get_model_config",
    "load_checkpoint",
]


def __getattr__(name):
    # Lazy so that `import evaclip` stays cheap and sub-packages can be imported on their own.
    if name in ("list_models", "create_model", "create_model_and_transforms", "get_tokenizer", "get_model_config"):
        from evaclip.models import factory
        return getattr(factory, name)
    if name == "load_checkpoint":
        from evaclip.models.checkpoint import load_checkpoint
        return load_checkpoint
    raise AttributeError(f"module 'evaclip' has no attribute {name!r}")
