"""Access security: everyone reads, only the configured users (and hosts) write, CA and PVA."""

from __future__ import annotations

import getpass

import pytest

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


def caproto_write(ioc, suffix, value, user=None, host=None):
    from caproto.threading.client import Context

    ctx = Context(client_name=user, host_name=host)
    try:
        (pv,) = ctx.get_pvs(ioc.pv(suffix), timeout=5)
        pv.wait_for_connection(timeout=5)
        try:
            resp = pv.write(value, wait=True, timeout=5)
        except Exception:  # caproto refuses locally once it knows access is denied
            return False
        return bool(resp.status.success)
    finally:
        ctx.disconnect()


def test_only_listed_users_write_and_everyone_reads(iocs, pva):
    import epics
    from p4p.client.thread import RemoteError

    me = getpass.getuser()
    assert me != "operator"
    ioc = iocs.start(writers=["operator"])
    acf = (ioc.work / "ptychoflow.acf").read_text()
    assert 'UAG(writers) { "operator" }' in acf
    epochs = ioc.pv("Recon:Epochs")
    assert epics.caget(epochs, timeout=5) == 100  # reading is open
    assert pva.get(epochs) == 100
    # this process's user is not in the ACF: pyepics, caproto and p4p are refused
    with pytest.raises(epics.ca.CASeverityException, match="Write access denied"):
        epics.caput(epochs, 5, wait=True)
    assert not caproto_write(ioc, "Recon:Epochs", [6], user=me)
    with pytest.raises(RemoteError):
        pva.put(epochs, 7)
    assert pva.get(epochs) == 100
    # a CA client that identifies as the listed user may write
    assert caproto_write(ioc, "Recon:Epochs", [8], user="operator")
    assert pva.get(epochs) == 8


def test_listed_user_on_an_unlisted_host_is_refused(iocs, pva):
    me = getpass.getuser()
    ioc = iocs.start(writers=[me], writer_hosts=["console1.beamline"])
    assert not caproto_write(ioc, "Recon:Epochs", [9], user=me, host="laptop.visitor")
    assert caproto_write(ioc, "Recon:Epochs", [10], user=me, host="console1.beamline")
    assert pva.get(ioc.pv("Recon:Epochs")) == 10
