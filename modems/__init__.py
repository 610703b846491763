"""GSM modems over serial ports: AT stack, SMS decoding, modem pool, emulator.

This package knows nothing about hubs; `supplier` builds on it.
"""
