"""Orchestration above the stages: ``drive`` (speech -> a talking video of a trained subject) and ``demo`` (the whole
pipeline on the built-in subject). Imports the stages; nothing below imports it."""
