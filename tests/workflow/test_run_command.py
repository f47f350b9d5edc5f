"""vertebra run: a workflow script, with progress on the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import sys
    import vertebra
    from vertebra.workflow import step, fan_out
    from tests.workflow.services import Maths

    with vertebra.connect() as bus:          # the URL comes from vertebra run --url
        bus.serve(Maths())
        flow = step("maths.split") | fan_out(step("maths.double")) | step("maths.total")
        print("url", bus.core.url)
        print("result", flow.run(bus, int(sys.argv[1])))
""")


def test_run_executes_a_workflow_script_with_progress(tmp_path):
    script = tmp_path / "flow.py"
    script.write_text(SCRIPT)
    command = [sys.executable, "-m", "vertebra", "run", str(script), "4", "--url", "memory://flows"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert out.returncode == 0, out.stderr
    assert "url memory://flows" in out.stdout
    assert "result 12" in out.stdout                              # 2 * (0 + 1 + 2 + 3)
    progress = [line for line in out.stderr.splitlines() if line.startswith("[workflow]")]
    assert progress[0] == "[workflow] started maths.split"
    assert progress.count("[workflow] done maths.double") == 4
    assert progress[-1] == "[workflow] finished: 12"
