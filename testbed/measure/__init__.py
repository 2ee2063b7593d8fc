"""Runs and measurement: per-node samples, the slowdown probe and the guard, one point's
measurement, points side by side, the runner's schedule and its stopping rule."""
