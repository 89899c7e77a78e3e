"""Ray cluster entry points, empty until distributed pretraining lands (Ray Train, submit, Tune).

The package exists now so the layout, packaging and layering rules are fixed from the start.
"""
