"""Live Update Workbench: measure, inspect and demonstrate Linux live update (KHO/LUO) experiments."""

__version__ = "0.1.0"
