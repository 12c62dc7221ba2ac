"""The HTTP adapter: nbdurable's API over HTTP, for webhooks and other systems.

- :mod:`nbdurable.http.api`: what each request does, without a web framework;
- :mod:`nbdurable.http.handlers`: the same as tornado handlers, on a server's own auth;
- :mod:`nbdurable.http.serve`: ``nbdurable serve`` (a bearer token);
- :mod:`nbdurable.http.jupyter`: the Jupyter server extension (Jupyter's auth).
"""
