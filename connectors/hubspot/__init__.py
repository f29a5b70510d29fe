"""HubSpot connector: provisioning, signed webhooks, batch write-back and scheduled sync on the
CRM v3 APIs through `hubspot-api-client`."""

from __future__ import annotations

from crm_elasticity.connectors.hubspot.connector import HubSpotConnector

CONNECTOR = HubSpotConnector

__all__ = ["CONNECTOR", "HubSpotConnector"]
