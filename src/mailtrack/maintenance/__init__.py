"""Operations: retention, IP anonymization, leases, GDPR export and erasure, metrics, hardening."""
