"""The number-supplier daemon: SIM inventory, hub protocol, SMS delivery."""

__version__ = "0.1.0"
