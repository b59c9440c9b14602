"""Scale-out: scanning on a Ray cluster (optional extra ``diffsleuth[distributed]``)."""
