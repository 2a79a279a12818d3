
# --- MQTT broker fixture (delivery: outbox / publisher / subscribe tests) -------------------------
import pytest as _pytest  # noqa: E402


@_pytest.fixture
def mosquitto(tmp_path_factory):
    """A running Mosquitto on a free loopback port; ``.stop()`` / ``.start()`` simulate an outage.

    Fails (never skips) when mosquitto is missing: CI installs it, and a silent skip would hide
    the delivery tests.
    """
    from mosquitto import Mosquitto, find_mosquitto

    if find_mosquitto() is None:
        _pytest.fail("mosquitto is not installed: run 'sudo apt-get install mosquitto' (CI installs it)")
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


# --- the daemon's tests: a real tiny .tflite bundle, built once per session -----------------------
@_pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """(bundle dir, threshold) of a 32x32 gray autoencoder; see tests/tiny_bundle.py."""
    from tiny_bundle import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle", size=32)
