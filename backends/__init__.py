"""Compile targets. ``registry`` lists them; each target lives in its own subpackage."""
