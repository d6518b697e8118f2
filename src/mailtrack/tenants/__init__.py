"""Salons (tenants), their managers, API keys and settings."""
