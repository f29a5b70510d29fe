"""Salesforce connector: custom fields and List Views, outbound-message and signed JSON
webhooks, SOQL reads, composite and Bulk API 2.0 write-back (README, "Salesforce")."""

from crm_elasticity.connectors.salesforce.connector import SalesforceConnector

CONNECTOR = SalesforceConnector

__all__ = ["CONNECTOR", "SalesforceConnector"]
