"""The UNet out of PyTorch: the export contract, ONNX export and the TensorRT engine build.

- `export.contract`: names, dtypes, the dynamic batch axis and the profile, declared once.
- `export.onnx`: ADMUNet → ONNX (opset 21 with native GroupNormalization, else 17), checked
  with onnx.checker and onnxruntime.
- `export.tensorrt`: ONNX → TensorRT engine (fp16/bf16/fp8), cached by a key of everything
  that changes it and compared with the torch model before it is kept.

onnxruntime/onnxscript (`[onnx]`) and tensorrt/torch-tensorrt (`[tensorrt]`) are optional
extras, imported only where used. The command line is `python -m engine.build`.
"""
