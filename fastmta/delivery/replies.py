# SPDX-License-Identifier: MIT
"""The replies the outbound side reports for failures no next hop answered.

These never go on the wire; they are what the delivery log, the retry logic and
DSNs see when DNS, a connection or a capability check failed. Codes follow what
Postfix reports in the same situations, so operators read familiar words.
"""

from __future__ import annotations

from fastmta.errors import Reply

NXDOMAIN = Reply(550, "5.1.2", "Host or domain name not found (NXDOMAIN)")
NULL_MX = Reply(556, "5.1.10", "Recipient domain does not accept mail (null MX, RFC 7505)")
NOT_LOCAL_LOCALHOST = Reply(550, "5.1.2", "localhost is not a local domain here, and never looked up")
NO_ADDRESS = Reply(550, "5.1.2", "Domain has no MX and no address record")
MX_NO_ADDRESS = Reply(451, "4.4.4", "No address found for any mail exchanger of the domain")
DNS_TEMPFAIL = Reply(451, "4.4.3", "Temporary DNS failure looking up the mail exchangers")

CONNECTION_LOST = Reply(451, "4.4.2", "Lost connection with the next hop")
TIMEOUT = Reply(451, "4.4.2", "Timed out waiting for the next hop's reply")
PROTOCOL = Reply(451, "4.5.0", "Next hop broke the SMTP protocol")

TLS_REQUIRED = Reply(451, "4.7.5", "TLS is required but the next hop does not offer STARTTLS")
STS_NO_MX = Reply(451, "4.7.5", "No mail exchanger of the domain matches its MTA-STS policy")
# RFC 8689 §4.2.1, §5: a REQUIRETLS message that cannot go out over verified TLS bounces
REQUIRETLS_UNVERIFIED = Reply(
    550,
    "5.7.10",
    "REQUIRETLS: the next hop cannot be reached over verified TLS (no MTA-STS, DANE or required TLS)",
)
REQUIRETLS_NOT_OFFERED = Reply(550, "5.7.10", "REQUIRETLS: the next hop does not support REQUIRETLS")
AUTH_UNAVAILABLE = Reply(451, "4.7.0", "Next hop does not offer AUTH for the configured credentials")
AUTH_FAILED = Reply(451, "4.7.0", "Authentication to the next hop failed")
AUTH_FILE = Reply(451, "4.3.5", "Next hop credentials are not readable (route auth_file)")

NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Next hop does not support SMTPUTF8, which this message requires")
NEEDS_8BITMIME = Reply(554, "5.6.3", "Next hop does not support 8BITMIME and the message has 8-bit data")
TOO_BIG = Reply(552, "5.3.4", "Message is larger than the next hop accepts (its SIZE)")

TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many hops (Received: and Delivered-To: fields): mail loop")

DKIM_UNAVAILABLE = Reply(451, "4.3.0", "DKIM signing is unavailable; will retry")
NO_BODY = Reply(451, "4.3.0", "Message body missing from the queue")
INTERNAL = Reply(451, "4.3.0", "Internal error during delivery; will retry")
