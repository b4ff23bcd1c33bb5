"""Writes the JPEG fixtures of sluice-media's decoder tests (progressive and restart-marker
files, which the TurboJPEG API used in the tests cannot write). Needs Pillow:
`python3 -m venv /tmp/pil && /tmp/pil/bin/pip install pillow numpy && /tmp/pil/bin/python make_fixtures.py`.
"""
import numpy as np
from PIL import Image

def photo(w, h, seed=7):
    rng = np.random.default_rng(seed)
    x = np.arange(w)[None, :] / w
    y = np.arange(h)[:, None] / h
    r = 120 + 90 * np.sin(6 * x + 2 * y) + 20 * np.cos(40 * x * y)
    g = 100 + 80 * np.cos(5 * y - 3 * x) + 15 * np.sin(55 * x)
    b = 90 + 60 * np.sin(9 * (x - y)) + 10 * np.cos(70 * y)
    img = np.stack(np.broadcast_arrays(r, g, b), -1) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))

img = photo(301, 203)
img.save("progressive_420.jpg", quality=85, progressive=True, subsampling=2)
img.convert("L").save("progressive_gray.jpg", quality=90, progressive=True)
img.save("restart_422.jpg", quality=80, subsampling=1, restart_marker_blocks=7)
img.save("progressive_422.jpg", quality=85, progressive=True, subsampling=1)
