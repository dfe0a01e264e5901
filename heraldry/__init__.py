"""heraldry: open time-tagger gateware and host driver."""
__version__ = "0.1.0"
