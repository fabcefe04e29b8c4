"""Tests of one module against an independent computation, on tiny models built in seconds."""
