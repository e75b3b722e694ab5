"""tshark's JSON dissection, per protocol layer instance, so several PDUs in one frame stay aligned (tests only)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Keep repeated keys (several PDUs of one protocol in one frame) as lists."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            if not isinstance(out[k], list) or not out.get(f"__multi_{k}"):
                out[k] = [out[k]]
                out[f"__multi_{k}"] = True
            out[k].append(v)
        else:
            out[k] = v
    return out


def layers(path: Path, display_filter: str, protocols: list[str], options: list[str] | None = None) -> list[dict[str, Any]]:
    """One dict per frame: {"frame.number": n, proto: [layer dict, ...] for each protocol}."""
    exe = shutil.which("tshark")
    assert exe, "tshark is required for the correctness tests (apt-get install tshark)"
    cmd = [exe, "-n", "-r", str(path), "-Y", display_filter, "-T", "json", "-J", " ".join(["frame", *protocols])]
    cmd += options or []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    frames = json.loads(out, object_pairs_hook=_pairs_hook)
    rows = []
    for fr in frames:
        lay = fr["_source"]["layers"]
        row: dict[str, Any] = {"frame.number": int(lay["frame"]["frame.number"])}
        for p in protocols:
            v = lay.get(p, [])
            row[p] = v if isinstance(v, list) else [v]
        rows.append(row)
    return rows


def compare_by_frame(ours: dict[int, list[tuple]], theirs: dict[int, list[tuple]]) -> tuple[int, list[str]]:
    """Messages per frame, ours against tshark's: how many agree, and one line per frame that differs."""
    agree, diffs = 0, []
    for frame in sorted(set(ours) | set(theirs)):
        a, b = ours.get(frame, []), theirs.get(frame, [])
        if a == b:
            agree += len(a)
        else:
            diffs.append(f"frame {frame}: ours {a}\n  tshark {b}")
    return agree, diffs
