"""ImageNet-style crops of streamed images, done the papers' way with PIL (the torch reference), and
the checks every streaming loader applies to a file's bytes before decoding it.

Training: random-resized-crop (area 8–100 %, aspect 3/4–4/3, torchvision's ten tries then a centre
fallback) resized to S×S, mirrored with probability ½; the draws depend only on (seed, epoch,
image index), so any rank count, worker count or resume gives the same crops. Evaluation: the
shorter side resized to round(S·256/224) and the centre S×S kept. Without augmentation (the
contrastive recipes crop for themselves) the shorter side goes to S and the centre square is kept.
"""
from __future__ import annotations

import io
import math

import numpy as np

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
CROPS = ("random_resized", "centre_square", "evaluation")


def eval_resize_size(size: int) -> int:
    """The shorter side before the evaluation centre crop: 256 for 224."""
    return round(size * 256 / 224)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng((seed, epoch, index))


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator, scale=SCALE,
                            ratio=RATIO) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width), by torchvision's RandomResizedCrop rule."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_width = round(math.sqrt(target_area * aspect))
        crop_height = round(math.sqrt(target_area / aspect))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
            return top, left, crop_height, crop_width
    aspect = width / height  # fallback: the whole image, trimmed to the nearest allowed aspect ratio
    if aspect < ratio[0]:
        crop_width, crop_height = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        crop_width, crop_height = round(height * ratio[1]), height
    else:
        crop_width, crop_height = width, height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


# ---------------------------------------------------------------------------- bytes
def incomplete_reason(data: bytes) -> str:
    """Why these bytes cannot be a whole image ('' when they can): truncated downloads and non-image
    files, found without decoding. DALI's decoders stop the whole pipeline on such a file."""
    head = bytes(data[:16])
    if len(data) < 16:
        return f"{len(data)} bytes is too short for an image"
    if head[:3] == b"\xff\xd8\xff":
        return "" if b"\xff\xd9" in bytes(data[-4096:]) else "truncated JPEG (no end-of-image marker)"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "" if b"IEND" in bytes(data[-64:]) else "truncated PNG (no IEND chunk)"
    if head[:2] == b"BM":
        declared = int.from_bytes(head[2:6], "little")
        return "" if declared <= len(data) else f"truncated BMP ({len(data)} of {declared} bytes)"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        declared = int.from_bytes(head[4:8], "little") + 8
        return "" if declared <= len(data) else f"truncated WebP ({len(data)} of {declared} bytes)"
    return "not a JPEG, PNG, BMP or WebP file"


def read_encoded(path: str) -> tuple[bytes, str]:
    """A file's bytes and why they are not a whole image ('' when they are)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        return b"", f"unreadable ({error.strerror or error})"
    return data, incomplete_reason(data)


def decode_rgb(data: bytes):
    """PIL image in RGB (grey, palette, CMYK and alpha converted); raises OSError/ValueError on damage."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


def load_rgb(path: str):
    """(PIL RGB image, "") or (None, why not): the byte checks, then PIL's decoder."""
    data, problem = read_encoded(path)
    if problem:
        return None, problem
    try:
        return decode_rgb(data), ""
    except (OSError, ValueError, SyntaxError) as error:
        return None, f"{type(error).__name__}: {error}"


# ---------------------------------------------------------------------------- the PIL reference crops
def crop_with_pil(image, size: int, crop: str, rng: np.random.Generator | None = None,
                  flip: bool = True) -> np.ndarray:
    """uint8 [size, size, 3] of a PIL RGB image: `crop` is one of CROPS (module docstring); a random-resized
    crop is mirrored with probability ½ where `flip` (its coin is drawn either way)."""
    from PIL import Image

    width, height = image.size
    if crop == "random_resized":
        top, left, crop_height, crop_width = random_resized_crop_box(height, width, rng)
        out = image.resize((size, size), Image.BILINEAR, box=(left, top, left + crop_width, top + crop_height))
        if rng.random() < 0.5 and flip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return np.array(out, dtype=np.uint8)  # a writable copy
    if crop not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; valid: {', '.join(CROPS)}")
    shorter = eval_resize_size(size) if crop == "evaluation" else size
    scale = shorter / min(width, height)
    new_width, new_height = (shorter, max(shorter, round(height * scale))) if width <= height else \
        (max(shorter, round(width * scale)), shorter)
    resized = image.resize((new_width, new_height), Image.BILINEAR)
    left, top = (new_width - size + 1) // 2, (new_height - size + 1) // 2  # halves round up, as DALI's crop
    return np.array(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)
