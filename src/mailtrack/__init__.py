"""Mailtrack: email tracking for a salon-booking platform."""

__version__ = "0.1.0"
