"""Seed sources: each yields raw rows (`extract`) and turns them into `MovieRecord`s (`normalize`)."""
