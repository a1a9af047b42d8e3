"""The three dlib model files face_recognition runs, as facerec downloads and verifies them.

Each is taken from the installed `face_recognition_models` distribution when it is there (the extra
`facerec[dlib]` installs it), else downloaded bz2-compressed from dlib.net (through `FACEREC_MIRROR`
when set), decompressed and cached in `$TORCH_HOME/checkpoints`; either way checked against the SHA-256
of the file as shipped.
"""

from __future__ import annotations

from facerec.plugin import WeightFile

DLIB_FILES = "http://dlib.net/files/"


def dlib_model(filename: str, sha256: str) -> WeightFile:
    return WeightFile(
        url=f"{DLIB_FILES}{filename}.bz2",
        filename=filename,
        sha256=sha256,
        compression="bz2",
        package_file=("face_recognition_models", f"models/{filename}"),
    )


RESNET_V1 = dlib_model(
    "dlib_face_recognition_resnet_model_v1.dat",
    "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
)
SHAPE_PREDICTOR_5 = dlib_model(
    "shape_predictor_5_face_landmarks.dat",
    "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
)
MMOD_DETECTOR = dlib_model(
    "mmod_human_face_detector.dat",
    "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
)
