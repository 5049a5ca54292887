"""twotier's application tier: Gunicorn configured for life behind the proxy (see docs/app-tier.md)."""
