"""Tracking stage: face landmarks, the fixed face crop, foreground masks, head-model fitting, the overlay (media I/O
and the SUBJECT folder it writes are in :mod:`gaussian_flametalk.io`).

Modules:
    landmarks  pluggable landmark detectors (mediapipe default, face-alignment optional), per-clip results
    crop       one fixed square head crop per clip, from a cheap detection scan
    masks      person/foreground masks (mediapipe selfie segmentation)
    fit        head-model fitting to the landmarks

Importing this package loads no model; mediapipe is imported when a detector or segmenter is created.
"""

from .crop import CropMargin, FaceScan, crop_from_detections, find_crop, scan_faces
from .landmarks import (
    MEDIAPIPE_TO_IBUG68,
    ClipLandmarks,
    DetectorUnavailableError,
    FaceAlignmentDetector,
    FaceDetection,
    LandmarkDetector,
    MediapipeDetector,
    MultipleFacesError,
    NoFaceError,
    check_faces,
    detect_clip,
    interpolate_missing,
    make_detector,
    mediapipe_to_ibug68,
    pick_face,
)
from .masks import ForegroundSegmenter, iter_masks, segment_clip

__all__ = [
    "MEDIAPIPE_TO_IBUG68",
    "ClipLandmarks",
    "CropMargin",
    "DetectorUnavailableError",
    "FaceAlignmentDetector",
    "FaceDetection",
    "FaceScan",
    "ForegroundSegmenter",
    "LandmarkDetector",
    "MediapipeDetector",
    "MultipleFacesError",
    "NoFaceError",
    "check_faces",
    "crop_from_detections",
    "detect_clip",
    "find_crop",
    "interpolate_missing",
    "iter_masks",
    "make_detector",
    "mediapipe_to_ibug68",
    "pick_face",
    "scan_faces",
    "segment_clip",
]
