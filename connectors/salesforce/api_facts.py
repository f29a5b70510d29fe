"""Salesforce facts the connector relies on, in one place.

Sources: Salesforce's REST, Bulk API 2.0 and Metadata API documentation, and the
simple-salesforce source."""

from __future__ import annotations

COLLECTION_MAX = 200
"""sObject Collections take at most 200 records a request."""

QUERY_BATCH = 2000
"""The largest SOQL page (`Sforce-Query-Options: batchSize`); also the default."""

URI_AND_HEADERS_MAX = 16_384
"""Salesforce refuses a REST request whose URI plus headers exceed 16,384 bytes: 414 when the
URI alone is over, 431 when the headers push it over."""

QUERY_LINE_BUDGET = 12 * 1024
"""Bytes a GET query's request line may take (`GET /services/data/vNN.0/query/?q=<the
URL-encoded SOQL> HTTP/1.1`). Every `IN (...)` list is chunked to fit. The 4 KB left of the
16,384 is for headers: ours (a bearer session id of ~120 bytes, content type, accept,
encoding, user agent, `Sforce-Query-Options`) take well under 1 KB, and a proxy between us and
Salesforce may add its own. Fewer, larger queries save API calls; this budget keeps each one
far from the edge whatever the mapping selects."""

RESUME_ID = "0" * 18
"""An 18-character stand-in for the `Id > '...'` clause a resumed query adds, so a chunk is
sized with that clause included."""

METADATA_BATCH = 10
"""Metadata CRUD calls take at most 10 components of one type."""

BULK_MAX_BYTES = 90 * 1024 * 1024
"""UTF-8 bytes per Bulk 2.0 upload. Salesforce takes at most 150 MB once base64-encoded and
says to upload no more than 100 MB of data; split jobs well before that."""

BULK_NULL = "#N/A"
"""Bulk 2.0 ignores empty cells on update; this value nulls a field."""

OUTBOUND_NS = "http://soap.sforce.com/2005/09/outbound"
SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

OUTBOUND_ACK = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    b'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
    b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
    b" <soapenv:Body>\n"
    b'  <notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">\n'
    b"   <Ack>true</Ack>\n"
    b"  </notificationsResponse>\n"
    b" </soapenv:Body>\n"
    b"</soapenv:Envelope>\n"
)
"""The acknowledgement the outbound-messaging WSDL defines; anything else is redelivered."""

ORG_ID_SHORT = 15
"""Org ids arrive as 15- or 18-character ids; the first 15 characters identify the org."""

SIGNATURE_HEADER = "x-elasticity-signature"
SIGNATURE_TOLERANCE_SECONDS = 300

TASK_PRIORITY = {"HIGH": "High", "MEDIUM": "Normal", "LOW": "Low"}
"""Our mapping's priorities -> the standard Task Priority picklist."""

USER_ID_PREFIX = "005"
"""A Lead can be owned by a queue (00G...), which cannot own a Task."""

LOCK_ERROR = "UNABLE_TO_LOCK_ROW"
LIMIT_ERROR = "REQUEST_LIMIT_EXCEEDED"
SESSION_ERROR = "INVALID_SESSION_ID"

NOT_API_CALLS = ("/services/oauth2/", "/services/Soap/u/")
"""Login and token requests do not count against the org's daily API allowance."""
