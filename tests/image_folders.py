"""A small real image folder made from digits: mixed formats, sizes, grey and CMYK, one truncated JPEG."""
import numpy as np
from PIL import Image

from pipeline import datasets


def make_image_folder(root, corrupt_one=True):
    digits = datasets.build_splits("digits", "unused", 24, 0.1, seed=0).train
    for label in range(3):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for k, index in enumerate(np.flatnonzero(digits.labels == label)[:6]):
            image = Image.fromarray(digits.images[index])
            if k == 1:
                image = image.convert("L")  # grayscale files are converted to RGB
            if k == 2:
                image = image.convert("CMYK")
                image.save(folder / f"{k}.jpg")
                continue
            image.resize((24 + 8 * k, 24)).save(folder / f"{k}.{'png' if k % 2 else 'jpg'}")  # mixed sizes
    if corrupt_one:
        data = (root / "class_0" / "0.jpg").read_bytes()
        (root / "class_0" / "0.jpg").write_bytes(data[: len(data) // 3])  # truncated JPEG
    return root
