"""``python -m bench.run --baseline REF``: this tree's rtpai beside another commit's, in one run.

The machine's speed drifts from day to day (docs/performance.md: the same code measured 2.06
and 2.87 CPU-ms per call-second on different days), so a target such as "0.41x of
main@a38b145" is only meaningful measured back to back. This checks REF out as a detached git
worktree under the system's temporary directory (outside the repository's tree; reused on the
next run), builds its compiled fast path if it has one (setup.py, as ``pip install`` would),
and runs the same N calls against both trees alternately, baseline first: A, B, A, B.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def baseline_tree(root: Path, ref: str) -> Path:
    """A worktree of ``ref`` (any commit-ish), checked out and built; reused if present."""
    commit = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        check=True, capture_output=True, text=True).stdout.strip()
    tree = Path(tempfile.gettempdir()) / f"rtpai-baseline-{commit[:12]}"
    if not (tree / "ctl" / "daemon.py").exists():
        subprocess.run(["git", "-C", str(root), "worktree", "prune"], check=True)
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "--force",
                        str(tree), commit], check=True, capture_output=True)
    if (tree / "setup.py").exists():
        # In place, as `pip install -e .` does: the daemon runs with the tree as its cwd. A
        # failed build leaves that commit on its pure-Python path, which its log line says.
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree,
                       check=False, capture_output=True)
    return tree


def compare(ref: str, tree: Path, this_tree: Path, calls: int, reps: int,
            run_calls: Callable[[int, Path], dict[str, Any]]) -> dict[str, Any]:
    """``reps`` runs of ``calls`` calls on each tree, alternating; the CPU per call-second of
    each run, the medians and their ratio (this tree / baseline)."""
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "this": []}
    for rep in range(reps):
        for name, where in (("baseline", tree), ("this", this_tree)):
            print(f"-- {name} ({ref if name == 'baseline' else this_tree}), run {rep + 1}",
                  flush=True)
            result = run_calls(calls, where)
            runs[name].append(result)
            print(f"   {result.get('rtpai_cpu_ms_per_call_s')} CPU-ms per call-s, p99 gap "
                  f"error {result.get('gap_err_us', {}).get('p99_us')} us", flush=True)
    medians = {}
    for name, results in runs.items():
        figures = [r["rtpai_cpu_ms_per_call_s"] for r in results
                   if r.get("rtpai_cpu_ms_per_call_s") is not None]
        medians[name] = statistics.median(figures) if figures else None
    ratio = (round(medians["this"] / medians["baseline"], 3)
             if medians["this"] and medians["baseline"] else None)
    return {"ref": ref, "tree": str(tree), "calls": calls, "runs": runs,
            "cpu_ms_per_call_s": medians, "ratio": ratio}
