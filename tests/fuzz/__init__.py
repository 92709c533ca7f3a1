"""Fuzz campaigns over the loaders (``python -m tests.fuzz.campaign <loader> --examples N --seed S``)."""
