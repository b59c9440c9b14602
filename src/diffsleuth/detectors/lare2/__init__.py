"""LaRE² (arXiv 2403.17465): the LaRE feature, the EGRE detector and its training recipe.

``features`` computes the latent reconstruction error of one Stable Diffusion step, ``model`` is the
detector (CLIP RN50 refined by LaRE), ``training`` the recipe behind ``diffsleuth train lare2``.
See README.md beside this file and docs/lare2.md.
"""
