import subprocess
import sys
from pathlib import Path

import pytest

from edge_detect.config import load_config, parse_config
from edge_detect.validate import ConfigError

CLI = str(Path(sys.executable).parent / "edge-detect")
EXAMPLE = Path(__file__).resolve().parent.parent / "edge_detect" / "data" / "example.toml"

MINIMAL = """
[device]
id = "line1"
[model]
bundle = "/var/lib/edge-detect/bundle"
[[cameras]]
name = "front"
[cameras.source]
type = "directory"
path = "/srv/ftp/front"
"""


def _write(tmp_path, text):
    p = tmp_path / "edge.toml"
    p.write_text(text)
    return p


def _errors(tmp_path, text):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, text))
    return e.value


def test_minimal_config_gets_documented_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL))
    (cam,) = cfg.cameras
    assert cam.source_type == "directory" and cam.source.after == "move" and cam.source.settle == 0.5
    assert cam.trigger.type == "interval" and cam.debounce_n == cam.debounce_m == 1 and cam.cooldown == 0
    assert cfg.model.accelerator is None and cfg.model.watch and cfg.stats.interval == 60
    assert cfg.outbox.policy == "drop_oldest" and cfg.mqtt.port == 1883
    assert "camera   front: directory (/srv/ftp/front), trigger every frame" in cfg.summary()


def test_example_config_is_valid():
    cfg = load_config(EXAMPLE)
    assert len(cfg.cameras) == 3
    assert {c.source_type for c in cfg.cameras} == {"directory", "http", "opencv"}
    assert cfg.model.accelerator.name == "edgetpu:usb"


def test_every_problem_is_named_with_key_and_file(tmp_path):
    e = _errors(tmp_path, MINIMAL.replace('id = "line1"', 'id = "line1"\ncolour = "red"')
                .replace('path = "/srv/ftp/front"', 'path = "/srv/ftp/front"\nsettle = "slow"')
                + '[cameras.trigger]\ntype = "plc"\n[stats]\ninterval = -1\n[extra]\nx = 1\n')
    text = str(e)
    path = str(tmp_path / "edge.toml")
    assert all(line.startswith(path + ": ") for line in text.splitlines())
    for want in ("device.colour: unknown key", "cameras[0].source.settle: must be a number, got 'slow'",
                 "cameras[0].trigger.type: must be one of interval, mqtt", "stats.interval: must be > 0 s",
                 "extra: unknown section"):
        assert want in text, text
    assert len(e.errors) == 5


def test_unknown_keys_read_the_same_in_every_table(tmp_path):
    # [mqtt] is validated by publisher.py, the rest by validate.from_table: one wording for both.
    e = _errors(tmp_path, MINIMAL.replace('name = "front"', 'name = "front"\ndebounce_mm = 3')
                + '[mqtt]\nkepalive = 30\n[mqtt.tls]\ncafile = "ca.pem"\n')
    path = str(tmp_path / "edge.toml")
    assert [line.split(" (known: ")[0] for line in str(e).splitlines()] == [
        f"{path}: mqtt.kepalive: unknown key", f"{path}: mqtt.tls.cafile: unknown key",
        f"{path}: cameras[0].debounce_mm: unknown key"], str(e)
    assert "(known: client_id, discovery," in str(e) and "(known: ca_file, cert_file, insecure, key_file)" in str(e)


def test_range_and_duplicate_problems_come_with_the_type_problems(tmp_path):
    # A value out of range beside a mistyped key of the same table, and a duplicate camera name
    # where one of the two cameras has a problem of its own: all in one run, not one fix at a time.
    e = _errors(tmp_path, MINIMAL.replace('id = "line1"', 'id = "-bad"\nlog_level = 3')
                .replace('path = "/srv/ftp/front"', 'path = "/srv/ftp/front"\nsettle = -1\npoll_interval = "x"')
                + '[[cameras]]\nname = "front"\n[cameras.source]\ntype = "directory"\npath = "/srv/b"\n')
    text = str(e)
    for want in ("device.id: must be 1-64 of", "device.log_level: must be a string",
                 "cameras[0].source.settle: must be >= 0", "cameras[0].source.poll_interval: must be a number",
                 "cameras: name 'front' is used more than once"):
        assert want in text, text
    assert len(e.errors) == 5


@pytest.mark.parametrize(
    "patch, key",
    [
        (('bundle = "/var/lib/edge-detect/bundle"', "bundle = 3"), "model.bundle: must be a string"),
        (('bundle = "/var/lib/edge-detect/bundle"', 'bundle = "b"\nnum_threads = 1.5'), "model.num_threads"),
        (('bundle = "/var/lib/edge-detect/bundle"', 'bundle = "b"\n[model.accelerator]\ntype = "npu"'),
         "model.accelerator.type"),
        (('bundle = "/var/lib/edge-detect/bundle"', 'bundle = "b"\n[model.accelerator]\ntype = "edgetpu"\nspeed = 1'),
         "model.accelerator.speed: unknown key (known: device, library_path)"),
        (('name = "front"', 'name = "front/left"'), "cameras[0].name"),
        (('name = "front"', 'name = "front"\nroi = [1, 2, 3]'),
         "cameras[0].roi: must be an array of 4 integers, got [1, 2, 3]"),
        (('name = "front"', 'name = "front"\ndebounce_n = 3\ndebounce_m = 2'), "cameras[0].debounce_n"),
        (('name = "front"', 'name = "front"\nroi = [1, 2, "3", 4]'),
         "cameras[0].roi: must be an array of 4 integers, got [1, 2, '3', 4]"),
        (('path = "/srv/ftp/front"', 'path = "/srv/ftp/front"\npatterns = ["*.jpg", 2]'),
         "cameras[0].source.patterns: must be an array of strings, got ['*.jpg', 2]"),
        (('name = "front"', 'name = "front"\nqueue = 99999999999'), "cameras[0].queue: must be 1..1000 frames"),
        (('name = "front"', 'name = "front"\nthreshold = "high"'), "cameras[0].threshold: must be a number"),
        (('type = "directory"', 'type = "ftp"'), "cameras[0].source.type: must be one of directory, http, opencv"),
        (('path = "/srv/ftp/front"', 'path = "/srv/ftp/front"\nafter = "archive"'), "cameras[0].source.after"),
        (('[device]', '[mqtt]\nport = 99999\n[device]'), "mqtt.port"),
        (('[device]', '[mqtt]\nhostname = "x"\n[device]'), "mqtt.hostname: unknown key (known: client_id, "),
        # The source type is [cameras.source] type; the internal field it fills is no key of the file.
        (('name = "front"', 'name = "front"\nsource_type = "http"'),
         "cameras[0].source_type: unknown key (known: cooldown, debounce_m, debounce_n, heatmap, name, queue, roi, "
         "snapshot, source, stall_timeout, threshold, trigger)"),
        (('[device]', '[outbox]\npolicy = "drop_newest"\n[device]'), "outbox.policy"),
        # nan passes every range check (nan <= 0 is false), so it is refused as a number at all.
        (('[device]', '[stats]\ninterval = nan\n[device]'), "stats.interval: must be a number, got nan"),
        (('name = "front"', 'name = "front"\nthreshold = nan'), "cameras[0].threshold: must be a number, got nan"),
    ],
)
def test_wrong_types_and_values_name_the_key(tmp_path, patch, key):
    old, new = patch
    assert old in MINIMAL
    e = _errors(tmp_path, MINIMAL.replace(old, new, 1))
    assert key in str(e), str(e)


def test_missing_sections_and_duplicate_cameras(tmp_path):
    e = _errors(tmp_path, '[device]\nid = "x"\n')
    assert "model: required section is missing" in str(e) and "cameras: required section is missing" in str(e)
    dup = MINIMAL + '[[cameras]]\nname = "front"\n[cameras.source]\ntype = "http"\nurl = "http://cam/snap"\n'
    assert "name 'front' is used more than once" in str(_errors(tmp_path, dup))
    nosrc = MINIMAL.split("[cameras.source]")[0]
    assert "cameras[0].source: required table is missing" in str(_errors(tmp_path, nosrc))


def test_toml_syntax_and_missing_file(tmp_path):
    assert "not valid TOML" in str(_errors(tmp_path, "[device\nid = 1"))
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[device]\n")
    with pytest.raises(ConfigError, match=f"{binary}: not valid TOML: not UTF-8 text"):
        load_config(binary)


def test_tls_file_that_is_not_pem_is_a_config_error(tmp_path):
    """Found by check-config, not an ssl.SSLError traceback when the daemon (or health) makes its client."""
    notes = tmp_path / "ca.pem"
    notes.write_text("not a certificate\n")
    e = _errors(tmp_path, MINIMAL + f'[mqtt.tls]\nca_file = "{notes}"\n')
    assert f"mqtt.tls: CA file {notes}: not usable for TLS" in str(e), str(e)


@pytest.mark.parametrize("args", [["check-config", "{}"], ["run", "--config", "{}"], ["health", "--config", "{}"]])
def test_one_config_problem_is_one_line(tmp_path, args):
    bad = _write(tmp_path, MINIMAL.replace('id = "line1"', "id = 7"))
    r = subprocess.run([CLI, *(a.format(bad) for a in args)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: invalid config: {bad}: device.id: must be a string, got 7"


def test_parse_config_accepts_a_dict():
    cfg = parse_config({"device": {"id": "d"}, "model": {"bundle": "b"},
                        "cameras": [{"name": "c", "source": {"type": "http", "url": "https://u:p@cam/s.jpg"},
                                     "trigger": {"type": "mqtt"}}]})
    assert cfg.cameras[0].trigger.type == "mqtt"
    assert "u:p" not in cfg.summary()  # credentials in URLs never reach output


def test_check_config_cli(tmp_path):
    good = _write(tmp_path, MINIMAL)
    r = subprocess.run([CLI, "check-config", str(good)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout and "front" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL.replace('id = "line1"', "id = 7"))
    r = subprocess.run([CLI, "check-config", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and f"{bad}: device.id: must be a string, got 7" in r.stderr
    r = subprocess.run([CLI, "run", "--config", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "device.id" in r.stderr
