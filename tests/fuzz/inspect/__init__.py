"""Hostile input for the dump readers and drgn helpers of workbench/inspect/."""
