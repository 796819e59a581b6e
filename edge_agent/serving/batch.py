"""Placeholder router, filled in by the pattern's module."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
