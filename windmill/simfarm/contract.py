"""The wire contract of each Animal Farm service (spec/animal-farm-api.md §1–§3): names, quirks, envelopes, bytes.

A `Profile` holds everything that differs between services at the HTTP level; the analyzers only
produce predictions. Bodies are serialized the way Flask does (§2.6).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from windmill.errors import WindmillError

MAX_IMAGE_BYTES = 8 * 1024 * 1024
ALLOWED_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "gif", "bmp", "webp"})


@dataclass(frozen=True)
class Profile:
    """One service as the HTTP contract describes it."""

    key: str  # the catalog name
    analyzer: str  # which simulated model answers
    service_field: str  # the literal `service` value (§1)
    framework: str
    legacy_handlers: bool = False  # Flask app-level handlers: 413/400/500 with {"error": str} bodies
    unquoted_params: bool = False  # BLIP/CLIP: "either url or file parameter"
    strict_post: bool = False  # metadata/pose: POST needs a file part; `- choose one`; model_info on errors
    upload_extension_check: bool = False
    file_extension_check: bool = False
    url_image_check: bool = False  # URL format and `Content-Type: image/*` checked
    two_stage: bool = False  # CLIP_detection/xception_detection: no v2 routes, file errors are 500
    file_size_check: bool = True
    download_timeout_s: float = 10.0
    download_failure: tuple[int, str] = (400, "Failed to download/process image: ")  # status, message prefix
    nominal_time_s: float = 0.05  # typical processing_time, for deterministic simulated timings
    scores: bool = False  # serves /score (caption scoring, CLIP on 7778)
    health: dict[str, Any] = field(default_factory=lambda: {"status": "healthy"})

    def model_info(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"framework": self.framework, **(extra or {})}

    # §2.4 message variants.
    @property
    def missing_input_message(self) -> str:
        if self.strict_post:
            return "Must provide either 'url' or 'file' parameter"
        if self.unquoted_params:
            return "Must provide either url or file parameter, or POST a file"
        return "Must provide either 'url' or 'file' parameter, or POST a file"

    @property
    def both_inputs_message(self) -> str:
        suffix = " - choose one" if self.strict_post else ""
        return f"Cannot provide both 'url' and 'file' parameters{suffix}"


_DETECTOR_HEALTH = {"status": "healthy", "model": {"status": "loaded", "device": "cpu"}}

PROFILES: dict[str, Profile] = {
    profile.key: profile
    for profile in (
        Profile("blip", "blip", "blip", "BLIP (Bootstrapping Language-Image Pre-training)", legacy_handlers=True,
                unquoted_params=True, upload_extension_check=True, file_extension_check=True,
                file_size_check=False, download_failure=(400, "Failed to download image: "), nominal_time_s=0.412,
                health={"status": "healthy", "model_status": "loaded", "device": "cpu"}),
        Profile("clip", "clip_detection", "YOLO-CLIP-Detector", "YOLO + CLIP", legacy_handlers=True,
                upload_extension_check=True, file_extension_check=True, url_image_check=True, two_stage=True,
                nominal_time_s=0.932, health={**_DETECTOR_HEALTH, "service": "YOLO-CLIP-Detector"}),
        Profile("colors", "colors", "colors", "Haishoku", nominal_time_s=0.158,
                health={"status": "healthy", "service": "Color Analysis",
                        "features": {"color_systems": ["copic"], "multi_region": True},
                        "endpoints": ["/health", "/analyze", "/v3/analyze"]}),
        Profile("detectron2", "detectron2", "detectron2", "Facebook AI Research", legacy_handlers=True,
                upload_extension_check=True, file_extension_check=True, url_image_check=True,
                nominal_time_s=0.153, health={**_DETECTOR_HEALTH, "service": "detectron2"}),
        Profile("face", "face", "face", "MediaPipe", upload_extension_check=True, file_extension_check=True,
                nominal_time_s=0.021, health={"status": "healthy", "service": "Face Detection"}),
        Profile("xception", "xception_detection", "YOLO11n-Xception-Detector", "YOLO + Xception",
                legacy_handlers=True, upload_extension_check=True, file_extension_check=True,
                url_image_check=True, two_stage=True, nominal_time_s=0.611,
                health={**_DETECTOR_HEALTH, "service": "YOLO11n-Xception-Detector"}),
        Profile("metadata", "metadata", "metadata", "ExifTool + PIL + OpenCV + NumPy", strict_post=True,
                nominal_time_s=0.187, health={"status": "healthy", "service": "Metadata Extraction"}),
        Profile("ocr", "ocr", "ocr", "PaddleOCR", nominal_time_s=0.318,
                health={"status": "healthy", "service": "OCR"}),
        Profile("nsfw2", "nsfw2", "nsfw2", "TensorFlow", nominal_time_s=0.044,
                health={"status": "healthy", "service": "NSFW2 Detection"}),
        Profile("ollama", "ollama", "ollama", "Ollama", download_timeout_s=15.0, nominal_time_s=2.184,
                health={"status": "healthy", "service": "Ollama API", "vision_model": "llava"}),
        Profile("pose", "pose", "pose", "MediaPipe Pose", strict_post=True, file_extension_check=True,
                nominal_time_s=0.212, health={"status": "healthy", "service": "Pose Estimation"}),
        Profile("rtdetr", "rtdetr", "rtdetr", "RT-DETR PyTorch", file_extension_check=True, url_image_check=True,
                nominal_time_s=0.071, health={**_DETECTOR_HEALTH, "service": "rtdetr"}),
        Profile("yolov8", "yolov8", "yolo", "Ultralytics YOLOv8", legacy_handlers=True, file_extension_check=True,
                url_image_check=True, nominal_time_s=0.046,
                health={"status": "healthy", "service": "YOLOv8 Object Detection",
                        "model": {"status": "loaded", "device": "cpu", "model_name": "Detect"},
                        "confidence_threshold": 0.25, "iou_threshold": 0.3, "supported_classes": 80,
                        "endpoints": ["/health", "/analyze", "/v3/analyze", "/classes"]}),
        # Port 7778 is plain CLIP: /score for caption scoring, /analyze as the classification backend.
        Profile("caption_score", "clip_backend", "clip", "OpenAI", legacy_handlers=True, unquoted_params=True,
                upload_extension_check=True, file_extension_check=True, url_image_check=True,
                download_failure=(500, "Internal error: "), nominal_time_s=0.061, scores=True,
                health={"status": "healthy", "model_status": "loaded", "device": "cpu", "num_labels": 1733}),
    )
}

SCORE_MODEL_INFO = {"framework": "OpenAI", "model": "ViT-L/14"}


def profile_for(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise WindmillError(
            f"the stand-in has no simulated service {name!r}; it simulates {', '.join(PROFILES)}"
        ) from None


def encode(document: Any) -> bytes:
    """Flask's JSON: compact, keys sorted at every level, non-ASCII escaped, a trailing newline."""
    return (json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")


def success(
    profile: Profile,
    predictions: list[dict[str, Any]],
    processing_time: float,
    *,
    top_level: dict[str, Any] | None = None,
    model_info: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """§2.3: the success envelope; `top_level` adds e.g. `full_image` (callers omit it when empty)."""
    return {
        "service": profile.service_field,
        "status": "success",
        "predictions": predictions,
        "metadata": {"processing_time": processing_time, "model_info": profile.model_info(model_info),
                     **(metadata or {})},
        **(top_level or {}),
    }


def error(profile: Profile, message: str, processing_time: float = 0.001) -> dict[str, Any]:
    """§2.4: the V3 error envelope; metadata and pose also carry model_info."""
    metadata: dict[str, Any] = {"processing_time": processing_time}
    if profile.strict_post:
        metadata["model_info"] = profile.model_info()
    return {"service": profile.service_field, "status": "error", "predictions": [], "error": {"message": message},
            "metadata": metadata}


def legacy_error(text: str) -> dict[str, Any]:
    """§2.4: the app-level Flask handler body (no service, no predictions, `error` a string)."""
    return {"error": text, "status": "error"}


def score_error(message: str) -> dict[str, Any]:
    """§3.4: caption scoring's error variant with a null score."""
    return {"service": "clip", "status": "error", "similarity_score": None, "error": {"message": message},
            "metadata": {"processing_time": 0.0}}


def _html(code: int, title: str, text: str) -> bytes:
    return (
        f"<!doctype html>\n<html lang=en>\n<title>{code} {title}</title>\n<h1>{title}</h1>\n<p>{text}</p>\n"
    ).encode()


NOT_FOUND_HTML = _html(
    404, "Not Found",
    "The requested URL was not found on the server. If you entered the URL manually please check your "
    "spelling and try again.",
)
METHOD_NOT_ALLOWED_HTML = _html(405, "Method Not Allowed", "The method is not allowed for the requested URL.")
# What a crashed worker behind a proxy answers: the "malformed body" fault sends it with a 500.
PROXY_ERROR_HTML = (
    b"<html>\r\n<head><title>500 Internal Server Error</title></head>\r\n<body>\r\n"
    b"<center><h1>500 Internal Server Error</h1></center>\r\n</body>\r\n</html>\r\n"
)
