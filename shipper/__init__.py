"""shipper: a log-shipping daemon for AI-agent audit trails."""

__version__ = "0.1.0"
