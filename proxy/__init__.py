"""twotier's web-server tier: an nginx-like reverse proxy on asyncio and h11."""

__version__ = "0.1.0"
