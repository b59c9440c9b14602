"""Natural-trace judge (arXiv 2403.16513): real images define the class; the default detector.

``model`` is the detector (encoder, projection, natural traces), ``training`` the end-to-end recipe
(``diffsleuth train judge``), ``head_training`` the recipe on cached embeddings of a frozen encoder
(``diffsleuth train judge-head``). See README.md beside this file and docs/judge.md.
"""
