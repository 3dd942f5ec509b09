"""Inside the model, with numpy only: filter mosaics, occlusion and Grad-CAM explanations, and the
pictures (mosaics, colour map, overlays) they are drawn as.
"""
