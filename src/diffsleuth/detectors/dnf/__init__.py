"""DNF (arXiv 2312.02625) and its DIRE baseline: diffusion-noise features and a ResNet classifier.

``ddim`` holds the inversion/reconstruction loops, ``noise`` the shared extractor, ``features`` and
``dire`` the two feature maps, ``model`` the detectors and ``training`` the recipe behind
``diffsleuth train dnf|dire``. See README.md beside this file and docs/dnf.md.
"""
