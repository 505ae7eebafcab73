"""Shared test set-up: the repo root on sys.path, and where the bundled real clips live."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
VIDEOS = os.path.join(ROOT, "tests", "data", "videos")
