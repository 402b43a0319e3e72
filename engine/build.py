"""`python -m engine.build`: the ADM UNet → ONNX → TensorRT engine (the code is export.build, next to
what it builds). Without the onnx extra it stops with one line naming it."""

import sys


def main(argv=None) -> int:
    try:
        from export.build import main as build
    except ImportError as err:                   # the [onnx] extra is missing
        print(f"python -m engine.build: {err}", file=sys.stderr)
        return 2
    return build(argv)


if __name__ == "__main__":
    sys.exit(main())
