"""Models: the spconv LiDAR student, the frozen image teacher, the depth lift, and the
distiller that composes them (single-device, no collectives)."""
