"""Placement policies, selectable by name: ``Space(policy="access_counter")``.

Built in: ``static`` (R5: never migrate), ``first_touch``, ``on_demand``, ``access_counter``,
``autonuma`` and ``oracle`` (offline, from a recorded trace).  Register your own class with
:func:`register_policy` to select it by name too.
"""
from __future__ import annotations

from typing import Any

from ..errors import InvalidArgumentError
from .access_counter import AccessCounter
from .autonuma import AutoNuma
from .base import Move, Policy
from .oracle import Oracle, OracleSchedule, UserConstraints, plan_oracle
from .simple import FirstTouch, OnDemand, Static

_REGISTRY: dict[str, type[Policy]] = {}


class UnknownPolicyError(InvalidArgumentError):
    """A policy name that is not registered; the message lists the valid ones."""


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Make a Policy subclass selectable by its ``name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise TypeError(f"register_policy needs a Policy subclass, got {cls!r}")
    _REGISTRY[cls.name] = cls
    return cls


for _c in (Static, FirstTouch, OnDemand, AccessCounter, AutoNuma, Oracle):
    register_policy(_c)


def available_policies() -> list[str]:
    return list(_REGISTRY)


def make_policy(spec: "str | Policy", **params: Any) -> Policy:
    """A policy instance from a name (with parameters) or an instance (returned as is)."""
    if isinstance(spec, Policy):
        if params:
            raise InvalidArgumentError("policy parameters given with a policy instance")
        return spec
    if not isinstance(spec, str) or spec not in _REGISTRY:
        raise UnknownPolicyError(f"unknown policy {spec!r}; available: "
                                 f"{', '.join(available_policies())}")
    try:
        return _REGISTRY[spec](**params)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"policy {spec!r}: {exc}") from exc


__all__ = ["Policy", "Move", "Static", "FirstTouch", "OnDemand", "AccessCounter", "AutoNuma",
           "Oracle", "OracleSchedule", "UserConstraints", "plan_oracle", "register_policy", "make_policy",
           "available_policies", "UnknownPolicyError"]
