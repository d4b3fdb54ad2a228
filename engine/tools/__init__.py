"""Measuring tools behind `effort bench` and `effort eval`, and random models of real shapes."""
