"""Globus credentials: a clear way out when they are missing, tokens kept private.

Offline: Globus Auth and Transfer are answered by ``responses`` through
globus-sdk's own testing tools; the token files are globus-sdk's own storage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
import time
from pathlib import Path

import pytest
import responses
from globus_sdk.scopes import ComputeScopes, FlowsScopes, TransferScopes
from globus_sdk.testing import RegisteredResponse
from globus_sdk.token_storage import JSONTokenStorage, TokenStorageData
from responses.matchers import urlencoded_params_matcher

from ptychoflow.config import ConfigError
from ptychoflow.ioc import login_cli
from ptychoflow.ioc.globus_auth import (
    CLIENT_ID_ENV,
    CLIENT_SECRET_ENV,
    NATIVE_CLIENT_ID_ENV,
    TOKEN_DIR_ENV,
    USER_TOKENS,
    AuthSettings,
    CredentialsError,
    auth_from,
    credentials_needed,
    login,
    requirements,
    token_folder,
    transfer_client,
)

NATIVE_ID = "c0ffee00-0000-4000-8000-000000000001"
SERVICE_ID = "5e1ec700-0000-4000-8000-000000000002"
COLLECTION = "11111111-1111-4111-8111-111111111111"
SCOPES = {TransferScopes.resource_server: str(TransferScopes.all),
          ComputeScopes.resource_server: str(ComputeScopes.all),
          FlowsScopes.resource_server: str(FlowsScopes.all)}


def store_tokens(folder: Path, scopes: dict[str, str] | None = None, *,
                 expires_in: int = 3600, token: str = "TOKEN") -> None:
    """A person's stored tokens, as `ptychoflow login` leaves them (one per resource server)."""
    folder.mkdir(parents=True, exist_ok=True)
    storage = JSONTokenStorage(folder / USER_TOKENS, namespace=NATIVE_ID)
    storage.store_token_data_by_resource_server({
        rs: TokenStorageData(rs, None, scope, f"{token}-{rs}", f"REFRESH-{rs}",
                             int(time.time()) + expires_in, "Bearer")
        for rs, scope in (scopes or SCOPES).items()})


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (CLIENT_ID_ENV, CLIENT_SECRET_ENV, NATIVE_CLIENT_ID_ENV, TOKEN_DIR_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def person(tmp_path: Path) -> AuthSettings:
    return AuthSettings(native_client_id=NATIVE_ID, token_dir=str(tmp_path / "tokens"))


def endpoint_doc() -> RegisteredResponse:
    return RegisteredResponse(service="transfer", path=f"/v0.10/endpoint/{COLLECTION}",
                              json={"DATA_TYPE": "endpoint", "id": COLLECTION})


def client_credentials_reply(rs: str, scope: str, token: str) -> RegisteredResponse:
    return RegisteredResponse(
        service="auth", method="POST", path="/v2/oauth2/token",
        json={"access_token": token, "scope": scope, "expires_in": 172800,
              "token_type": "Bearer", "resource_server": rs, "other_tokens": []},
        match=[urlencoded_params_matcher({"grant_type": "client_credentials", "scope": scope})])


def test_token_folder_follows_the_setting_then_the_environment_then_xdg(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert token_folder(AuthSettings()) == tmp_path / "xdg" / "ptychoflow"
    monkeypatch.setenv(TOKEN_DIR_ENV, str(tmp_path / "env"))
    assert token_folder(AuthSettings()) == tmp_path / "env"
    assert token_folder(AuthSettings(token_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"


@responses.activate
def test_stored_tokens_are_sent_to_globus_and_never_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store_tokens(tmp_path / "tokens", token="SECRET7")
    endpoint_doc().add()
    tc = transfer_client(person(tmp_path))
    assert tc.get_endpoint(COLLECTION)["id"] == COLLECTION
    assert responses.calls[0].request.headers["Authorization"] == \
        f"Bearer SECRET7-{TransferScopes.resource_server}"
    assert "SECRET7" not in caplog.text
    assert "REFRESH-" not in caplog.text


@responses.activate
def test_no_login_yet_says_run_ptychoflow_login(tmp_path: Path) -> None:
    endpoint_doc().add()
    tc = transfer_client(person(tmp_path))
    with pytest.raises(CredentialsError, match="run `ptychoflow login`"), \
            credentials_needed("Globus Transfer"):
        tc.get_endpoint(COLLECTION)
    assert len(responses.calls) == 0  # nothing went out without a token


@responses.activate
def test_expired_token_whose_refresh_is_refused_says_run_ptychoflow_login(
        tmp_path: Path) -> None:
    store_tokens(tmp_path / "tokens", expires_in=-60)
    RegisteredResponse(service="auth", method="POST", path="/v2/oauth2/token", status=400,
                       json={"error": "invalid_grant"}).add()
    endpoint_doc().add()
    tc = transfer_client(person(tmp_path))
    with pytest.raises(CredentialsError) as info, credentials_needed("Globus Transfer"):
        tc.get_endpoint(COLLECTION)
    assert "refused the stored tokens (400 invalid_grant)" in str(info.value)
    assert "run `ptychoflow login`" in str(info.value)
    assert [c.request.url for c in responses.calls] == ["https://auth.globus.org/v2/oauth2/token"]


def test_a_person_without_a_native_client_id_is_told_which_setting_to_fill(
        tmp_path: Path) -> None:
    with pytest.raises(CredentialsError) as info:
        transfer_client(AuthSettings(token_dir=str(tmp_path / "tokens")))
    assert "ptychoflow login" in str(info.value)
    assert "native_client_id" in str(info.value)
    assert NATIVE_CLIENT_ID_ENV in str(info.value)


def test_token_file_open_to_others_is_set_to_0600_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store_tokens(tmp_path / "tokens")
    path = tmp_path / "tokens" / USER_TOKENS
    path.chmod(0o644)
    transfer_client(person(tmp_path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "mode 0644" in caplog.text and "set it to 0600" in caplog.text


@responses.activate
def test_service_account_login_stores_tokens_0600_and_prints_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(CLIENT_ID_ENV, SERVICE_ID)
    monkeypatch.setenv(CLIENT_SECRET_ENV, "CLIENTSECRET9")
    for rs, scope in {**SCOPES, "auth.globus.org": "openid"}.items():
        client_credentials_reply(rs, scope, f"ISSUED9-{rs}").add()
    config = tmp_path / "ptychoflow.toml"
    config.write_text(f'[ioc]\nwork_root = "{tmp_path / "work"}"\n'
                      f'[transfer.globus]\ntoken_dir = "{tmp_path / "tokens"}"\n')
    args = argparse.Namespace(config=str(config), force=False, logout=False,
                              native_client_id=None, credentials_file=None, token_dir=None)
    assert login_cli.run(args) == 0
    out = capsys.readouterr()
    path = tmp_path / "tokens" / "globus-client-tokens.json"
    assert out.out.strip() == (
        "Globus login as a service account: tokens for flows.globus.org, funcx_service, "
        f"transfer.api.globus.org stored in {path}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())["data"][SERVICE_ID]
    assert stored[TransferScopes.resource_server]["access_token"] == \
        f"ISSUED9-{TransferScopes.resource_server}"
    for text in (out.out, out.err, caplog.text):
        assert "ISSUED9" not in text and "CLIENTSECRET9" not in text
    assert len(responses.calls) == 4  # transfer, compute, flows, openid: one grant each


def test_credentials_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    creds = tmp_path / "client.json"
    creds.write_text(json.dumps({"client_id": SERVICE_ID, "client_secret": "x"}))
    creds.chmod(0o644)
    with pytest.raises(CredentialsError, match=f"run chmod 600 {creds}"):
        transfer_client(AuthSettings(credentials_file=str(creds),
                                     token_dir=str(tmp_path / "tokens")))


def test_half_a_service_account_in_the_environment_names_the_missing_half(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLIENT_ID_ENV, SERVICE_ID)
    with pytest.raises(CredentialsError, match=f"^{CLIENT_SECRET_ENV} is not set"):
        login(person(tmp_path), requirements(transfer=True))


def test_two_globus_tables_must_agree_on_the_credentials() -> None:
    a = {"token_dir": "/a", "native_client_id": NATIVE_ID}
    assert auth_from([a, {"token_dir": "/a"}]) == AuthSettings(native_client_id=NATIVE_ID,
                                                              token_dir="/a")
    assert auth_from([a, None], {"token_dir": "/flag"}).token_dir == "/flag"
    with pytest.raises(ConfigError, match="token_dir is '/a' in one Globus table and '/b'"):
        auth_from([a, {"token_dir": "/b"}])


def test_requirements_ask_data_access_consent_for_mapped_collections() -> None:
    needs = requirements(data_access=[COLLECTION], flow_ids=["f1"])
    assert sorted(needs) == ["f1", TransferScopes.resource_server]
    assert str(needs[TransferScopes.resource_server][0]) == (
        f"{TransferScopes.all}[*https://auth.globus.org/scopes/{COLLECTION}/data_access]")
    assert str(needs["f1"][0]) == "https://auth.globus.org/scopes/f1/flow_f1_user"


def test_token_folder_is_created_private(tmp_path: Path) -> None:
    store_tokens(tmp_path / "unused")
    transfer_client(person(tmp_path))
    assert stat.S_IMODE(os.stat(tmp_path / "tokens").st_mode) == 0o700
