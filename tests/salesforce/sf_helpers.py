"""Helpers of the Salesforce tests: paths, the secrets the `env` fixture (conftest.py) sets,
a connector built on the fake org's clock, and an outbound message of n notifications."""

from __future__ import annotations

from pathlib import Path

from crm_elasticity.connectors.salesforce import SalesforceConnector
from crm_elasticity.connectors.salesforce.config import credentials_from_env
from crm_elasticity.core.mapping import Mapping
from tests.fakes.salesforce import FakeSalesforce

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "whsec-test-0123456789"
OUTBOUND_TOKEN = "outbound-token-0123456789-abcdefghij"
OUTBOUND_QUERY = f"token={OUTBOUND_TOKEN}"


def build(mapping: Mapping, env: dict[str, str], fake: FakeSalesforce) -> SalesforceConnector:
    return SalesforceConnector(
        mapping, credentials_from_env(env), sleep=fake.sleep, jitter=lambda: 0.5
    )


def envelope_of(n: int) -> bytes:
    notes = "".join(
        f'<Notification><Id>04l5g00000{i:08d}</Id><sObject xsi:type="sf:Contact" '
        f'xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:Id>003{i:012d}AAA</sf:Id>'
        f"<sf:Last_Email_Open_Date__c>2026-03-02T09:{i % 60:02d}:00.000Z"
        "</sf:Last_Email_Open_Date__c>"
        f"<sf:Last_Email_Click_Date__c>2026-03-02T10:{i % 60:02d}:00.000Z"
        "</sf:Last_Email_Click_Date__c>"
        "<sf:HasOptedOutOfEmail>false</sf:HasOptedOutOfEmail></sObject></Notification>"
        for i in range(n)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
        'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        '<notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
        "<OrganizationId>00D5g000004ABCDEAA</OrganizationId><ActionId>04k5g000000bmsHAAQ</ActionId>"
        f"{notes}</notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()
