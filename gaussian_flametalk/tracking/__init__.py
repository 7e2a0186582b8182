"""Tracking stage: video/audio I/O, face landmarks, the fixed face crop, foreground masks, head-model fitting.

Modules:
    video      probe, stream (resample/crop/resize inside ffmpeg), extract 16 kHz mono audio, write mp4
    landmarks  pluggable landmark detectors (mediapipe default, face-alignment optional), per-clip results
    crop       one fixed square head crop per clip, from a cheap detection scan
    masks      person/foreground masks (mediapipe selfie segmentation)
    fit        head-model fitting to the landmarks

Importing this package loads no model; mediapipe is imported when a detector or segmenter is created.
"""

from .crop import CropBox, CropMargin, FaceScan, crop_from_detections, find_crop, scan_faces
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
    inter_ocular,
    interpolate_missing,
    make_detector,
    mediapipe_to_ibug68,
    pick_face,
)
from .masks import ForegroundSegmenter, iter_masks, segment_clip
from .video import VideoError, VideoInfo, extract_audio, ffmpeg_exe, iter_frames, output_size, probe_video, write_video

__all__ = [
    "MEDIAPIPE_TO_IBUG68",
    "ClipLandmarks",
    "CropBox",
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
    "VideoError",
    "VideoInfo",
    "check_faces",
    "crop_from_detections",
    "detect_clip",
    "extract_audio",
    "ffmpeg_exe",
    "find_crop",
    "inter_ocular",
    "interpolate_missing",
    "iter_frames",
    "iter_masks",
    "make_detector",
    "mediapipe_to_ibug68",
    "output_size",
    "pick_face",
    "probe_video",
    "scan_faces",
    "segment_clip",
    "write_video",
]
