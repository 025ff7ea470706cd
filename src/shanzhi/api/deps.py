"""What routes get from the running server: the database, the fleet, the controller."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from shanzhi.config import Settings
from shanzhi.controllers import ControllerManager, Fleet
from shanzhi.ledger.service import Ledger
from shanzhi.sealing import Vault
from shanzhi.services.oidc import CALLBACK_PATH, OidcConfig, RelyingParty
from shanzhi.store import Database


@dataclass
class Runtime:
    settings: Settings
    db: Database
    fleet: Fleet
    controller: ControllerManager | None
    ledger: Ledger | None = None
    oidc: RelyingParty | None = None
    vault: Vault | None = None  # seals second-factor secrets (mfa.key in the data dir)

    def wake(self) -> None:
        if self.controller is not None:
            self.controller.wake()


async def runtime(request: Request) -> Runtime:
    """Async on purpose: a plain lookup, so FastAPI need not hop to a worker thread for it."""
    rt: Runtime = request.app.state.runtime
    return rt


def relying_party(settings: Settings) -> RelyingParty | None:
    """The OpenID Connect relying party, when the settings name an issuer."""
    if not settings.oidc_issuer:
        return None
    return RelyingParty(
        OidcConfig(
            issuer=settings.oidc_issuer,
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret,
            redirect_uri=f"{settings.base_url}{CALLBACK_PATH}",
            scopes=settings.oidc_scopes,
            username_claim=settings.oidc_username_claim,
            groups_claim=settings.oidc_groups_claim,
            auto_create=settings.oidc_auto_create,
            name=settings.oidc_name,
            mfa_amr=settings.oidc_mfa_amr,
        )
    )
