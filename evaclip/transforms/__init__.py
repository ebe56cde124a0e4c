"""Image preprocessing for CLIP with PIL + torch (no torchvision).

    from evaclip.transforms import image_transform, images_to_tensor
    preprocess = image_transform(224, is_train=False)            # shortest-side resize + centre crop
    batch = images_to_tensor([Image.open(p) for p in paths], preprocess)   # [N, 3, 224, 224]
"""
from evaclip.transforms.color import ImageInputError, to_rgb
from evaclip.transforms.geometry import (
    center_crop, center_crop_box, random_resized_crop_box, resize_shortest, resized_crop, shortest_side_size,
)
from evaclip.transforms.presets import (
    INTERPOLATIONS, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, RESIZE_MODES, ImageTransform, image_transform,
    images_to_tensor, normalize, to_tensor,
)

__all__ = [
    "image_transform", "ImageTransform", "images_to_tensor", "to_rgb", "to_tensor", "normalize",
    "OPENAI_DATASET_MEAN", "OPENAI_DATASET_STD", "RESIZE_MODES", "INTERPOLATIONS", "ImageInputError",
    "shortest_side_size", "resize_shortest", "center_crop_box", "center_crop", "random_resized_crop_box",
    "resized_crop",
]
