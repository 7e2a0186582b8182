"""Interop with the tools this field already uses: VHAP's monocular export layout (import a VHAP-tracked sequence as
a SUBJECT; export a FLAME-tracked SUBJECT for GaussianAvatars' training). The avatar PLY needs no converter: it
follows the standard 3D Gaussian Splatting layout (``avatar.gaussians.save_ply``)."""

from .vhap import ExportVhapConfig, ImportVhapConfig, export_vhap, import_vhap, read_vhap

__all__ = ["ExportVhapConfig", "ImportVhapConfig", "export_vhap", "import_vhap", "read_vhap"]
