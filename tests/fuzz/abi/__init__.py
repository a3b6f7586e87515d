"""Hostile input for the decoders of workbench/abi/."""
