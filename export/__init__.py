"""The UNet out of PyTorch: the export contract, ONNX export, the TensorRT engine build and its command line.

- `export.contract`: names, dtypes, the dynamic batch axis and the profile, declared once.
- `export.onnx`: ADMUNet → ONNX (opset 21 with native GroupNormalization, else 17), checked
  with onnx.checker and onnxruntime.
- `export.tensorrt`: ONNX → TensorRT engine (fp16/bf16/fp8), cached by a key of everything
  that changes it and compared with the torch model before it is kept; the engine file and its
  record are read and written by engine.backends.engine_file, which the runtime shares.
- `export.build`: the command line, `python -m engine.build` (a thin entry point in engine/).
- `export.denoiser`: the learned prior's denoiser (FFDNet) → ONNX, checked in onnxruntime
  (`python -m export.denoiser`).

onnx/onnxruntime/onnxscript (`[onnx]`) and tensorrt/torch-tensorrt (`[tensorrt]`) are optional
extras, imported only here: the runtime (engine/) imports nothing from export/.
"""
