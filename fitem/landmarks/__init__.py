"""Landmarks: detector interface and backends (MediaPipe, dlib), iBUG-68 mapping, user landmarks, crop alignment."""
from fitem.landmarks.align import AlignTransform, align_transform
from fitem.landmarks.detector import (
    Detection,
    DetectionResult,
    Detector,
    detect_faces,
    detect_landmarks,
    get_detector,
    landmarks_from_user,
)
from fitem.landmarks.mapping import IBUG68_FROM_MEDIAPIPE, ibug68_from_mediapipe
from fitem.landmarks.pts import read_pts, write_pts

__all__ = [
    "AlignTransform",
    "Detection",
    "DetectionResult",
    "Detector",
    "IBUG68_FROM_MEDIAPIPE",
    "align_transform",
    "detect_faces",
    "detect_landmarks",
    "get_detector",
    "ibug68_from_mediapipe",
    "landmarks_from_user",
    "read_pts",
    "write_pts",
]
