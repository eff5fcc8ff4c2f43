"""The environment variables that carry the TLS settings (read by :mod:`.tls`, set by the
``--ca-file`` and ``--insecure-http`` options of ``kachery_node/cli/tls_options.py``): a module of
their own, so that the options cost ``kachery --help`` nothing."""

CA_FILE_ENV = "KACHERY_CA_FILE"
INSECURE_ENV = "KACHERY_INSECURE_HTTP"
