"""``ptychoflow login``: get the Globus tokens the IOC and ``ptychoflow flow`` act with.

One login asks for everything the configuration uses: Transfer (with the
``data_access`` consents of ``[transfer.globus]``), Compute, Flows, and the flow
``ptychoflow flow run`` deployed from this work folder, if any. A service
account (``PTYCHOFLOW_GLOBUS_CLIENT_ID`` / ``_SECRET``) gets its tokens without a
browser; a person opens the printed link once. See
:mod:`ptychoflow.ioc.globus_auth` for where the tokens are kept.
"""

from __future__ import annotations

import argparse
import sys

from ptychoflow.config import add_arguments, load_file, resolve
from ptychoflow.ioc.compute.base import table_of
from ptychoflow.ioc.globus_auth import AuthSettings

HELP = "log in to Globus once, so the IOC and `ptychoflow flow` can use Transfer, Compute, Flows"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the credentials flags (they override the Globus tables of the configuration)."""
    add_arguments(parser, AuthSettings)
    parser.add_argument("--force", action="store_true",
                        help="log in again even where the stored tokens still work")
    parser.add_argument("--logout", action="store_true",
                        help="revoke the stored tokens and delete them")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Log in (or out); print what was stored where, never a token."""
    from ptychoflow.ioc.globus_auth import (
        CredentialsError,
        auth_from,
        login,
        logout,
        requirements,
    )
    from ptychoflow.ioc.settings import IocSettings
    from ptychoflow.ioc.transfer.globus import GlobusTransferSettings
    from ptychoflow.remote.flow import saved_flow_id

    file_data = load_file(getattr(args, "config", None))
    transfer_table = table_of(file_data, "transfer", "globus")
    compute_table = table_of(file_data, "compute", "globus_compute")
    auth = auth_from([transfer_table, compute_table],
                     {k: getattr(args, k, None) for k in vars(AuthSettings())})
    try:
        if args.logout:
            print(logout(auth))
            return 0
        data_access: list[str] = []
        if transfer_table is not None:
            data_access = GlobusTransferSettings.from_table(transfer_table).data_access
        work = resolve(IocSettings, "ioc", None, file_data).work_path
        flow_id = saved_flow_id(work)
        needs = requirements(transfer=True, data_access=data_access, compute=True, flows=True,
                             flow_ids=[flow_id] if flow_id else [])
        print(login(auth, needs, force=args.force))
    except CredentialsError as exc:
        print(f"ptychoflow login: {exc}", file=sys.stderr)
        return 2
    return 0
