"""Ray cluster entry points: Ray Train pretraining workers, `hvdistill submit`, Ray Tune sweeps.

Empty until the distributed-pretraining stage lands (the README lists what exists); the
package exists so the layout, packaging and layering rules are fixed from the start.
"""
