"""Globus credentials: whom ptychoflow acts as, and where its tokens live.

Two kinds of identity, chosen by what is set (never by a flag spread through the code):

- a **service account** (an unattended beamline): a confidential client whose id
  and secret come from ``PTYCHOFLOW_GLOBUS_CLIENT_ID`` / ``PTYCHOFLOW_GLOBUS_CLIENT_SECRET``
  or from a JSON file (``{"client_id": ..., "client_secret": ...}``, mode 0600)
  named by ``credentials_file``; globus-sdk's ``ClientApp`` gets tokens itself;
- a **person**: ``ptychoflow login`` runs globus-sdk's native-app login
  (``UserApp``) once, asking for refresh tokens, so the IOC can then act for
  months without anyone at the keyboard.

Tokens live in globus-sdk's own ``JSONTokenStorage`` in the user's configuration
folder (``$PTYCHOFLOW_GLOBUS_TOKEN_DIR``, else ``$XDG_CONFIG_HOME/ptychoflow``,
else ``~/.config/ptychoflow``), mode 0600: the mode is checked, and fixed with a
warning, every time the file is opened, because the SDK only sets it when it
creates the file. Tokens are never printed or logged; only resource-server names are.

Nothing here starts a login by itself unless asked (``interactive=True``, for a
person at a terminal): the IOC gets :class:`CredentialsError`, whose message
says to run ``ptychoflow login``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from ptychoflow.config import ConfigError, setting

if TYPE_CHECKING:
    from globus_sdk import FlowsClient, GlobusApp, SpecificFlowClient, TransferClient
    from globus_sdk.scopes import Scope

log = logging.getLogger(__name__)

CLIENT_ID_ENV = "PTYCHOFLOW_GLOBUS_CLIENT_ID"
CLIENT_SECRET_ENV = "PTYCHOFLOW_GLOBUS_CLIENT_SECRET"
NATIVE_CLIENT_ID_ENV = "PTYCHOFLOW_GLOBUS_NATIVE_CLIENT_ID"
TOKEN_DIR_ENV = "PTYCHOFLOW_GLOBUS_TOKEN_DIR"
APP_NAME = "ptychoflow"
USER_TOKENS = "globus-tokens.json"
CLIENT_TOKENS = "globus-client-tokens.json"
LOGIN_RECORD = "globus-login.json"
"""Which native client id the person logged in with (refresh tokens are bound to it)."""

LOGIN_HINT = (f"run `ptychoflow login` (or, for an unattended beamline account, set "
              f"{CLIENT_ID_ENV} and {CLIENT_SECRET_ENV})")


class CredentialsError(RuntimeError):
    """No usable Globus credentials; the message says how to get them."""


@dataclass
class AuthSettings:
    """Where credentials come from; every Globus table of the configuration takes these keys.

    All default to the environment and the user's configuration folder, so a
    site usually sets none of them.
    """

    native_client_id: str = setting("", "id of the native app (registered at "
                                        "app.globus.org/settings/developers) a person logs "
                                        f"in with (default: ${NATIVE_CLIENT_ID_ENV}, else the "
                                        "one the last `ptychoflow login` used)")
    credentials_file: str = setting("", "JSON file with client_id and client_secret of a "
                                        "confidential client, mode 0600 (default: "
                                        f"${CLIENT_ID_ENV} / ${CLIENT_SECRET_ENV})")
    token_dir: str = setting("", f"folder of the token files (default: ${TOKEN_DIR_ENV}, "
                                 "else $XDG_CONFIG_HOME/ptychoflow or ~/.config/ptychoflow)")


def auth_from(tables: Sequence[Mapping[str, object] | None],
              overrides: Mapping[str, object | None] | None = None) -> AuthSettings:
    """The credentials settings of a command that uses several Globus tables.

    ``[transfer.globus]`` and ``[compute.globus_compute]`` both take the keys of
    :class:`AuthSettings`; where both set one, they must agree. ``overrides``
    (command-line flags) win.
    """
    values: dict[str, str] = {}
    for f in fields(AuthSettings):
        for table in tables:
            value = (table or {}).get(f.name)
            if not value:
                continue
            if f.name in values and values[f.name] != value:
                raise ConfigError(f"{f.name} is {values[f.name]!r} in one Globus table and "
                                  f"{value!r} in another; set it once, or the same in both")
            values[f.name] = str(value)
        if (overrides or {}).get(f.name):
            values[f.name] = str((overrides or {})[f.name])
    return AuthSettings(**values)


def token_folder(auth: AuthSettings) -> Path:
    """The folder holding the token files (created 0700 on first use)."""
    if auth.token_dir:
        return Path(auth.token_dir).expanduser()
    if os.environ.get(TOKEN_DIR_ENV):
        return Path(os.environ[TOKEN_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base).expanduser() / "ptychoflow"


def secure_file(path: Path) -> None:
    """Make ``path`` readable by its owner only, saying so if it was not."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        path.chmod(0o600)
        log.warning("%s was open to other users (mode %04o); set it to 0600", path, mode)


def client_credentials(auth: AuthSettings) -> tuple[str, str] | None:
    """The confidential client (id, secret), or ``None`` where a person logs in."""
    cid, secret = os.environ.get(CLIENT_ID_ENV, ""), os.environ.get(CLIENT_SECRET_ENV, "")
    if cid or secret:
        if not (cid and secret):
            missing = CLIENT_SECRET_ENV if cid else CLIENT_ID_ENV
            raise CredentialsError(f"{missing} is not set but its partner is; set both for a "
                                   "service account, or neither to use `ptychoflow login`")
        return cid, secret
    if not auth.credentials_file:
        return None
    path = Path(auth.credentials_file).expanduser()
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"credentials_file {path} cannot be read as JSON ({exc}); it "
                               'must hold {"client_id": ..., "client_secret": ...}') from None
    if mode & 0o077:
        raise CredentialsError(f"credentials_file {path} is readable by other users (mode "
                               f"{mode:04o}); run chmod 600 {path}")
    if not (isinstance(data, dict) and data.get("client_id") and data.get("client_secret")):
        raise CredentialsError(f"credentials_file {path} must hold client_id and client_secret")
    return str(data["client_id"]), str(data["client_secret"])


def native_client_id(auth: AuthSettings) -> str:
    """The native app a person logs in with: configured, from the environment, or recorded."""
    if auth.native_client_id or os.environ.get(NATIVE_CLIENT_ID_ENV):
        return auth.native_client_id or os.environ[NATIVE_CLIENT_ID_ENV]
    record = token_folder(auth) / LOGIN_RECORD
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return str(json.loads(record.read_text()).get("native_client_id") or "")
    return ""


def requirements(*, transfer: bool = False, data_access: Sequence[str] = (),
                 compute: bool = False, flows: bool = False,
                 flow_ids: Sequence[str] = ()) -> dict[str, list[Scope]]:
    """The scopes one use of Globus needs, by resource server.

    ``data_access`` lists collections (Globus Connect Server v5 mapped
    collections) that ask for a per-collection consent under the Transfer scope.
    """
    from globus_sdk.scopes import (
        ComputeScopes,
        FlowsScopes,
        GCSCollectionScopes,
        SpecificFlowScopes,
        TransferScopes,
    )

    out: dict[str, list[Scope]] = {}
    if transfer or data_access:
        scope = TransferScopes.all.with_dependencies(
            GCSCollectionScopes(c).data_access.with_optional(True) for c in data_access)
        out[TransferScopes.resource_server] = [scope]
    if compute:
        out[ComputeScopes.resource_server] = [ComputeScopes.all]
    if flows:
        out[FlowsScopes.resource_server] = [FlowsScopes.all]
    for flow_id in flow_ids:
        out[flow_id] = [SpecificFlowScopes(flow_id).user]
    return out


def globus_app(auth: AuthSettings, needs: Mapping[str, Sequence[Scope]], *,
               interactive: bool = False) -> GlobusApp:
    """A ``ClientApp`` (service account) or ``UserApp`` (person) with tokens on disk.

    With ``interactive=False`` a missing or expired token raises (as
    :class:`CredentialsError` through :func:`credentials_needed`) instead of
    starting a login that nobody would answer.
    """
    from globus_sdk import ClientApp, GlobusAppConfig, UserApp
    from globus_sdk.globus_app.config import resolve_by_login_flow
    from globus_sdk.token_storage import JSONTokenStorage

    folder = token_folder(auth)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    creds = client_credentials(auth)
    if creds is not None:
        path = folder / CLIENT_TOKENS
        secure_file(path)
        config = GlobusAppConfig(token_storage=JSONTokenStorage(path, namespace=creds[0]))
        return ClientApp(APP_NAME, client_id=creds[0], client_secret=creds[1],
                         scope_requirements=needs, config=config)
    cid = native_client_id(auth)
    if not cid:
        raise CredentialsError(
            f"no Globus credentials: {LOGIN_HINT}; a person's login needs native_client_id "
            f"(a native app registered at https://app.globus.org/settings/developers) in the "
            f"Globus table of the configuration or {NATIVE_CLIENT_ID_ENV}")
    path = folder / USER_TOKENS
    secure_file(path)
    config = GlobusAppConfig(
        token_storage=JSONTokenStorage(path, namespace=cid), request_refresh_tokens=True,
        token_validation_error_handler=resolve_by_login_flow if interactive else None)
    return UserApp(APP_NAME, client_id=cid, scope_requirements=needs, config=config)


def login(auth: AuthSettings, needs: Mapping[str, Sequence[Scope]], *,
          force: bool = False) -> str:
    """Get tokens for ``needs`` (a browser login for a person) and store them; say what was done."""
    from globus_sdk import ClientApp

    app = globus_app(auth, needs, interactive=True)
    with credentials_needed("login"):
        app.login(force=force)
    who = "service account" if isinstance(app, ClientApp) else "person"
    folder = token_folder(auth)
    if who == "person":
        record = folder / LOGIN_RECORD
        record.write_text(json.dumps({"native_client_id": str(app.client_id)}))
        secure_file(record)
    path = folder / (CLIENT_TOKENS if who == "service account" else USER_TOKENS)
    secure_file(path)
    app.close()
    return f"Globus login as a {who}: tokens for {', '.join(sorted(needs))} stored in {path}"


def logout(auth: AuthSettings) -> str:
    """Revoke and remove the stored tokens."""
    app = globus_app(auth, {})
    with credentials_needed("logout"):
        app.logout(sweep=True)
    app.close()
    return f"Globus tokens in {token_folder(auth)} revoked and removed"


def transfer_client(auth: AuthSettings, data_access: Sequence[str] = ()) -> TransferClient:
    """A ``TransferClient`` on the stored credentials (never prompts)."""
    from globus_sdk import TransferClient

    app = globus_app(auth, requirements(transfer=True, data_access=data_access))
    return TransferClient(app=app)


def compute_app(auth: AuthSettings) -> GlobusApp:
    """The app to hand to ``globus_compute_sdk.Client(app=...)`` (never prompts)."""
    return globus_app(auth, requirements(compute=True))


def flows_client(auth: AuthSettings, *, interactive: bool = False) -> FlowsClient:
    """A ``FlowsClient`` (deploy and watch flows)."""
    from globus_sdk import FlowsClient

    return FlowsClient(app=globus_app(auth, requirements(flows=True), interactive=interactive))


def specific_flow_client(auth: AuthSettings, flow_id: str, *,
                         interactive: bool = False) -> SpecificFlowClient:
    """A ``SpecificFlowClient`` (start runs of one flow, which has its own consent)."""
    from globus_sdk import SpecificFlowClient

    app = globus_app(auth, requirements(flow_ids=[flow_id]), interactive=interactive)
    return SpecificFlowClient(flow_id, app=app)


def credentials_problem(exc: BaseException) -> str | None:
    """What is wrong with the credentials, if ``exc`` is a credentials error; else ``None``."""
    from globus_sdk import GlobusAPIError, GlobusSDKUsageError
    from globus_sdk.gare import to_gare
    from globus_sdk.token_storage import TokenValidationError

    if isinstance(exc, CredentialsError):
        return str(exc)
    if isinstance(exc, TokenValidationError):
        return f"the stored Globus tokens are missing, expired or too narrow ({exc})"
    if isinstance(exc, GlobusAPIError):
        body = exc.raw_json if isinstance(exc.raw_json, dict) else {}
        code = exc.code if exc.code not in (None, "Error") else body.get("error", exc.code)
        if exc.http_status == 401 or code == "invalid_grant":
            return f"Globus refused the stored tokens ({exc.http_status} {code})"
        if exc.http_status == 403 and to_gare(exc) is not None:
            return f"Globus needs a new consent ({exc.code})"
    if isinstance(exc, GlobusSDKUsageError) and "scope" in str(exc).lower():
        return f"Globus credentials lack a scope ({exc})"
    return None


@contextlib.contextmanager
def credentials_needed(what: str) -> Iterator[None]:
    """Turn the SDK's token and authorization errors inside into :class:`CredentialsError`."""
    try:
        yield
    except Exception as exc:
        problem = credentials_problem(exc)
        if problem is None or isinstance(exc, CredentialsError):
            raise
        raise CredentialsError(f"{what}: {problem}; {LOGIN_HINT}") from exc

