"""Usage errors of all three CLIs are one ``error: ...`` line naming the command's help, exit 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from edge_deploy.cli import main as deploy_main
from edge_detect import __version__
from edge_detect.cli import main as device_main
from training.cli import main as train_main

CLIS = {"edge-detect": device_main, "edge-train": train_main, "edge-deploy": deploy_main}


@pytest.mark.parametrize("cli, args, message", [
    ("edge-detect", ["score", "b", "i", "--threads", "0"],
     "error: Invalid value for '--threads': 0 is not in the range 1<=x<=64 (see 'edge-detect score -h')"),
    ("edge-detect", ["score"], "error: Missing argument 'BUNDLE' (see 'edge-detect score -h')"),
    ("edge-detect", ["bundle", "list", "--bogus"],
     "error: No such option '--bogus' (see 'edge-detect bundle list -h')"),
    ("edge-detect", ["scroe"], "error: No such command 'scroe'. Did you mean 'score'? (see 'edge-detect -h')"),
    ("edge-train", ["fit", "d", "--out", "o", "--model", "vae"],
     "error: Invalid value for '--model': 'vae' is not one of "),
    ("edge-train", ["--bogus"], "error: No such option '--bogus'"),
    ("edge-deploy", ["keygen", "--name"], "error: Option '--name' requires an argument (see 'edge-deploy"),
])
def test_usage_errors_are_one_line_exit_2(cli, args, message):
    r = CliRunner().invoke(CLIS[cli], args, prog_name=cli)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("cli", list(CLIS))
def test_no_arguments_still_shows_the_help(cli):
    r = CliRunner().invoke(CLIS[cli], [], prog_name=cli)
    assert f"Usage: {cli} [OPTIONS] COMMAND [ARGS]..." in r.output and "Commands:" in r.output


def test_help_and_version_exit_0():
    assert CliRunner().invoke(device_main, ["score", "-h"]).exit_code == 0
    for cli in ("edge-detect", "edge-train", "edge-deploy"):
        r = CliRunner().invoke(CLIS[cli], ["--version"], prog_name=cli)
        assert r.exit_code == 0 and r.output == f"{cli}, version {__version__}\n"
