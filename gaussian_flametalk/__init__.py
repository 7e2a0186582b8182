"""gaussian-flametalk: audio-driven, wobble-free 3D Gaussian head avatars from a monocular video.

Packages (dependencies point one way, downwards in this list):
    geometry   rotations and the pinhole camera shared by every stage
    headmodel  parametric head models (FLAME, ICT-FaceKit, synthetic)
    tracking   video/audio I/O, landmarks, masks, head-model fitting
    avatar     Gaussian rasterizer, triangle binding, avatar training and rendering
    flametalk  audio encoders and the FlameTalk speech-to-motion model
    eval       stability, lip-sync, image and motion metrics
    scripts    the ``gft`` command line and benchmarks
"""

__version__ = "0.1.0"
