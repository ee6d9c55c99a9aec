"""Small image folders for the tests: one made from digits (mixed formats, sizes, grey and CMYK, one truncated
JPEG), and one of synthetic photos with the odd files of jpeg_folder.write_odd_files."""
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


def make_odd_photo_folder(root):
    """240 training and 60 validation photos of about 90×70 in 4 classes, and a grey, a CMYK, an RGBA and a
    truncated file among the training ones: the streaming loaders' test folder."""
    from train.commands.bench.jpeg_folder import make_jpeg_folder

    return make_jpeg_folder(root, train_images=240, val_images=60, classes=4, mean_size=(90, 70), odd_files=True,
                            workers=1)
