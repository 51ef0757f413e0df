from __future__ import annotations

import pytest

from infra.settings import Secret, SettingsError, load_settings


def test_defaults_are_the_embedded_store_and_real_whatsapp() -> None:
    settings = load_settings({})
    assert settings.store == "./data/store" and not settings.store_is_s3
    assert settings.whatsapp.backend == "neonize"
    assert settings.host.id and settings.host.work_dir


def test_strings_from_the_environment_are_converted() -> None:
    settings = load_settings(
        {
            "ZAPGATE_STORE": "s3://bucket/prefix",
            "ZAPGATE_HOST_POLL_INTERVAL": "0.25",
            "ZAPGATE_API_PORT": "9000",
            "ZAPGATE_S3_SECRET_KEY": "hunter2",
        }
    )
    assert settings.store_is_s3 and settings.host.poll_interval == 0.25 and settings.api.port == 9000
    assert isinstance(settings.s3.secret_key, Secret) and settings.s3.secret_key.reveal() == "hunter2"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.s3.secret_key)


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"ZAPGATE_HOST_POLL_INTERVAL": "soon"}, "ZAPGATE_HOST_POLL_INTERVAL"),
        ({"ZAPGATE_HOST_POLL_INTERVAL": "0"}, "ZAPGATE_HOST_POLL_INTERVAL"),
        ({"ZAPGATE_API_PORT": "eighty"}, "ZAPGATE_API_PORT"),
        ({"ZAPGATE_API_PORT": "70000"}, "ZAPGATE_API_PORT"),
        ({"ZAPGATE_WHATSAPP_BACKEND": "fake"}, "ZAPGATE_WHATSAPP_BACKEND"),
        ({"ZAPGATE_STORE": "s3://"}, "ZAPGATE_STORE"),
    ],
)
def test_a_bad_value_names_its_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(environ)


def test_the_simulator_never_switches_on_without_its_directory() -> None:
    with pytest.raises(SettingsError, match="ZAPGATE_WHATSAPP_SIMULATOR_DIR"):
        load_settings({"ZAPGATE_WHATSAPP_BACKEND": "simulated"})
    # A directory alone does not switch it on either.
    assert load_settings({"ZAPGATE_WHATSAPP_SIMULATOR_DIR": "/tmp/x"}).whatsapp.backend == "neonize"
