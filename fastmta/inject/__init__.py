# SPDX-License-Identifier: MIT
"""Local injection (sendmail, send): header fix-ups and submission to the spool or a listener."""
