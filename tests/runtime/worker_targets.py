"""Handlers for data worker tests that spawned workers import by name (no torch, no pytest)."""

from __future__ import annotations

import os


def hold(msg, ctx):
    return os.getpid(), []
