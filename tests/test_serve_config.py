"""The app's settings: the API key file from the args or from IMGSOUND_API_KEYS_FILE, and what the configs say."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve.app import app_settings
from serve.config import API_KEYS_FILE_ENV, AppArgs

ROOT = Path(__file__).resolve().parents[1]


def test_keys_are_off_unless_a_file_is_named(monkeypatch):
    monkeypatch.delenv(API_KEYS_FILE_ENV, raising=False)
    assert app_settings({}).auth.api_keys_file is None


def test_the_environment_names_the_key_file_for_make_serve(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(API_KEYS_FILE_ENV, "keys.txt")
    assert app_settings({}).auth.api_keys_file == str(tmp_path / "keys.txt")  # absolute: replicas run elsewhere
    explicit = app_settings({"auth": {"api_keys_file": "/etc/imgsound/api-keys"}})
    assert explicit.auth.api_keys_file == "/etc/imgsound/api-keys"


def test_auth_settings_are_checked():
    with pytest.raises(ValueError):
        AppArgs.model_validate({"auth": {"samples_per_minute": 0}})
    with pytest.raises(ValueError):
        AppArgs.model_validate({"auth": {"api_key": "plain"}})  # keys never go into the config, only their hashes


def test_production_config_has_auth_on_and_local_config_off():
    production = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())["applications"][0]
    local = yaml.safe_load((ROOT / "serve" / "config.local.yaml").read_text())["applications"][0]
    assert AppArgs.model_validate(production["args"]).auth.api_keys_file
    assert AppArgs.model_validate(production["args"]).auth.samples_per_minute
    assert AppArgs.model_validate(local["args"]).auth.api_keys_file is None
    drivers = {d["name"]: d for d in production["deployments"]}
    assert drivers["Driver"]["num_replicas"] >= 2 and drivers["Gatekeeper"]["num_replicas"] == 1
