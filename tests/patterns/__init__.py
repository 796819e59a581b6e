"""Tests of the serving patterns that span several process roles."""
