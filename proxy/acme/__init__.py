"""Automatic HTTPS: certificates from an ACME server (RFC 8555), obtained and renewed by the proxy.

The parts, each small:

* ``plan.py``: when to ask the CA (renewal times, the backoff after a
  failure). Pure functions of a certificate's dates, what was tried, and the
  time: tests give them a clock.
* ``store.py``: the storage folder (``[tls.acme] storage``): the account key,
  each certificate with its key in one file (so a reader never sees a new
  certificate beside an old key), what was last tried, and the challenges the
  workers answer. Folders 0700, files 0600, every write atomic.
* ``challenges.py``: the two challenges the proxy answers itself: http-01
  (RFC 8555 8.3) and tls-alpn-01 (RFC 8737), and what the workers need to
  recognise a tls-alpn-01 validation in a ClientHello.
* ``client.py``: one conversation with the CA, through the ``acme`` library
  (certbot's; it signs every request, we never build a JWS ourselves).

The process that runs the conversations (one per proxy, started by the
master; never a worker) is ``server/acme.py``.
"""
