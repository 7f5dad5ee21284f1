"""Whether a new model goes to the edge, and the put that sends it there.

A model is deployed only if it beats the one the edge serves: a validation
loss no higher and a quality (SSIM against the iterative reconstruction of its
newest scan) no lower. Otherwise it is registered, not deployed, and the
operator reads why. The first model always goes.
"""

from __future__ import annotations

from typing import Any


def _figure(model: dict[str, Any] | None, key: str) -> float | None:
    if model is None:
        return None
    metrics = model.get("metrics") or {}
    v = metrics.get(key)
    if key == "quality" and isinstance(v, dict):
        v = v.get("ssim")
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def beats(candidate: dict[str, Any], deployed: dict[str, Any] | None) -> tuple[bool, str]:
    """``(deploy?, why)`` for a registered candidate model against the deployed one."""
    if deployed is None:
        return True, "no model deployed yet"
    name = f"v{deployed['version']}"
    loss, old_loss = _figure(candidate, "best_val_loss"), _figure(deployed, "best_val_loss")
    if loss is not None and old_loss is not None and loss > old_loss:
        return False, f"validation loss {loss:.5g} is worse than deployed {name}'s {old_loss:.5g}"
    q, old_q = _figure(candidate, "quality"), _figure(deployed, "quality")
    if q is not None and old_q is not None and q < old_q:
        return False, f"quality {q:.3f} is worse than deployed {name}'s {old_q:.3f}"
    return True, f"beats deployed {name}"


def deploy_to_edge(edge_prefix: str, model: str, timeout: float = 10.0) -> None:
    """Ask the edge service to load ``model`` (a pvAccess put to Edge:Model:Load)."""
    from p4p.client.thread import Context

    pv = f"{edge_prefix}Edge:Model:Load"
    with Context("pva") as ctx:
        try:
            ctx.put(pv, model, timeout=timeout)
        except Exception as exc:
            raise RuntimeError(f"deploying {model} to the edge failed: put to {pv}: {exc}; "
                               f"is the edge running with prefix {edge_prefix}?") from exc
