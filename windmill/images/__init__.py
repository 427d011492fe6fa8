"""Images in memory: loading from a path or URL, validating with Pillow, and cropping boxes."""

from windmill.images.crop import (
    CropBox,
    clamp_crop,
    crop_box_to_image_coords,
    crop_for_service,
    crop_jpeg,
    crop_normalized_to_image_coords,
    crop_to_image_coords,
    face_prediction_to_image,
    pose_prediction_to_image,
)
from windmill.images.errors import BadImage, ImageUnavailable
from windmill.images.load import (
    DEFAULT_MAX_BYTES,
    FileMissing,
    check_image_url,
    download_image,
    load_image_bytes,
    read_image_file,
)
from windmill.images.validate import DEFAULT_MAX_PIXELS, PreparedImage, prepare_image, prepared_jpeg

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "BadImage",
    "CropBox",
    "FileMissing",
    "ImageUnavailable",
    "PreparedImage",
    "check_image_url",
    "clamp_crop",
    "crop_box_to_image_coords",
    "crop_for_service",
    "crop_jpeg",
    "crop_normalized_to_image_coords",
    "crop_to_image_coords",
    "download_image",
    "face_prediction_to_image",
    "load_image_bytes",
    "pose_prediction_to_image",
    "prepare_image",
    "prepared_jpeg",
    "read_image_file",
]
