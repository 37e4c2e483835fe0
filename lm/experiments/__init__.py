"""Sweeps over configs and the reports of their runs (`lm sweep`, `lm report`)."""
