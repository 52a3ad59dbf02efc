"""The serving layer (Ray Serve deployments over imgsound_core): see the README."""
