"""Quantize and export models for fast CPU inference (OpenVINO today; Neural Compressor and GGUF in issue 5).

Heavy libraries (optimum-intel, openvino) load only inside the functions that use them.
"""

from quantize.openvino import export_openvino, is_openvino_folder

__all__ = ["export_openvino", "is_openvino_folder"]
