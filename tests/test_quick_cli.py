"""``rtlab --version``, ``--help`` and ``plugins`` answer without importing torch (the stored plugin listing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT

# runs the CLI in a fresh interpreter and reports, after it, whether torch was imported
PROBE = ("import json, sys\nfrom framework.cli import main\ntry:\n    rc = main(sys.argv[1:])\n"
         "except SystemExit as exc:\n    rc = exc.code\n"
         "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}), file=sys.stderr)")


def rtlab(*args, cache, **env):
    full = {**os.environ, "PYTHONPATH": str(ROOT), "RTLAB_CACHE_DIR": str(cache), **env}
    res = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=full,
                         timeout=600, cwd=str(ROOT))
    facts = json.loads(res.stderr.strip().splitlines()[-1])
    return res.stdout, facts["rc"], facts["torch"]


def test_version_help_and_plugins_answer_without_importing_torch(tmp_path):
    out, rc, torch = rtlab("--version", cache=tmp_path)
    assert (out.strip(), rc, torch) == ("rtlab 0.1.0", 0, False)
    cold, rc, torch = rtlab("plugins", cache=tmp_path)  # loads the plugins (imports torch), stores the listing
    assert rc == 0 and torch and "knn" in cold and "command: aggregate" in cold
    live_help, _, _ = rtlab("--help", cache=tmp_path, RTLAB_PROBE="live")  # another key: loads the plugins
    for args, live in ((["plugins"], cold), (["--help"], live_help), ([], live_help)):
        out, rc, torch = rtlab(*args, cache=tmp_path)
        assert (rc, torch) == (0, False), args
        assert out == live, args  # the same text as with the plugins loaded
    out, rc, torch = rtlab("plugins", "--json", cache=tmp_path)
    assert not torch and {p["name"] for p in json.loads(out)} >= {"knn", "backbones", "progress"}


def test_the_stored_listing_follows_what_it_depends_on(tmp_path):
    rtlab("plugins", cache=tmp_path)
    blocked, _, torch = rtlab("plugins", cache=tmp_path, RTLAB_BLOCK_PLUGINS="knn")  # a new key: loads them
    assert torch and not [line for line in blocked.splitlines() if line.startswith("knn ")]
    stale = next(f for f in tmp_path.glob("plugin-listing-*.json")  # the listing stored without the block
                 if any(p["name"] == "knn" for p in json.loads(f.read_text())["plugins"]))
    data = json.loads(stale.read_text())
    stale.write_text(json.dumps({**data, "key": "from another version", "plugins": []}))
    out, _, torch = rtlab("plugins", cache=tmp_path)
    assert torch and out.startswith("backbones")  # a stale listing is not shown
