#!/usr/bin/env python3
"""Extract libonnxruntime.so.* (and the providers-shared helper) from an onnxruntime wheel.

Usage: extract-ort.py WHEEL_DIR OUT_DIR
Only the standard library is used; no onnxruntime import, no install.
"""
import glob
import os
import sys
import zipfile


def main() -> int:
    wheel_dir, out_dir = sys.argv[1], sys.argv[2]
    wheels = sorted(glob.glob(os.path.join(wheel_dir, "onnxruntime-*.whl")))
    if not wheels:
        print(f"no onnxruntime wheel in {wheel_dir}", file=sys.stderr)
        return 1
    found = False
    with zipfile.ZipFile(wheels[-1]) as z:
        for name in z.namelist():
            base = os.path.basename(name)
            if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime"):
                data = z.read(name)
                tmp = os.path.join(out_dir, base + ".tmp")
                with open(tmp, "wb") as f:
                    f.write(data)
                os.chmod(tmp, 0o644)
                os.replace(tmp, os.path.join(out_dir, base))
                print(f"extracted {base} ({len(data)} bytes)")
                found = found or base.startswith("libonnxruntime.so.")
    if not found:
        print("the wheel has no libonnxruntime.so.*", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
