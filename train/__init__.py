"""Training stage: labelled road photos and dashcam frames in, a self-describing checkpoint and its test metrics out.

torch is imported inside the modules that need it; `pothole_edge.train.config` and `.data` stay light.
"""
