"""Atheris harness: the mqtt decoder; invariants in fuzz/common.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz.harness import main

if __name__ == "__main__":
    main("mqtt")
