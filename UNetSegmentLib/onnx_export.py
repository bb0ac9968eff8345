"""Export a :class:`~UNetSegmentLib.network.UNet3D` to ONNX, for ONNX Runtime on the CPU.

The network is exported in eval mode (batch norm folded into the convolutions), with the
three spatial axes dynamic so that one file runs any window size the network accepts
(multiples of ``UNet3DConfig.divisor``), opset :data:`OPSET`. The export is byte-stable:
the same weights and the same PyTorch version give the same file and sha256, which
``model.json`` records. Needs PyTorch (training and packaging only; inference reads the file).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def onnx_bytes(network) -> bytes:
    """The ONNX serialisation of ``network`` (a ``UNet3D``; moved to the CPU, float32, eval mode)."""
    import torch

    net = network.to("cpu").float().eval()
    cfg = net.config
    size = [2 * d for d in cfg.divisor] if cfg.padding == "same" else [max(2 * d, 64) for d in cfg.divisor]
    example = torch.zeros((1, cfg.in_channels, *size), dtype=torch.float32)
    axes = {2: "z", 3: "y", 4: "x"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            net,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


def export_onnx(network, path: Union[str, Path]) -> Path:
    """Write ``network`` to ``path`` as ONNX (atomically: a partial file is never left)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(onnx_bytes(network))
    os.replace(tmp, path)
    return path
