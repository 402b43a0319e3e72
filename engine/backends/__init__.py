"""ε-model backends: how the network is evaluated inside the reverse loop.

| backend      | network                           | reverse loop                  |
| ------------ | --------------------------------- | ----------------------------- |
| torch        | eager PyTorch (fp32, fp16, bf16)  | Python loop                   |
| torch+graph  | eager PyTorch                     | whole loop in one CUDA graph  |
| compile      | torch.compile                     | Python loop                   |
| tensorrt     | a TensorRT engine (export/)       | whole loop in one CUDA graph  |
"""

from __future__ import annotations

from engine.backends.torch import PRECISIONS, torch_eps

BACKENDS = ("torch", "torch+graph", "compile", "tensorrt")
#: backends that capture the whole reverse loop in one CUDA graph
GRAPH_BACKENDS = ("torch+graph", "tensorrt")

__all__ = ["BACKENDS", "GRAPH_BACKENDS", "PRECISIONS", "torch_eps"]
