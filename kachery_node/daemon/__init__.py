"""The kachery node daemon: a long-running trio process serving a local API on 127.0.0.1.

Start it with ``kachery node start`` (or ``python -m kachery_node.daemon``); scripts talk to it
through :class:`kachery_node.daemon_client.DaemonClient`. Nothing is imported here, so that
``kachery_node.daemon.<module>`` costs only what that module needs.
"""
