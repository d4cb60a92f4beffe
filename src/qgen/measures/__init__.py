"""Measures of trained models, named after the equations they implement."""
