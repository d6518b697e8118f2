"""Delivery feedback: SMTP sending, DSN/ARF parsing, VERP, provider webhooks, suppression."""
