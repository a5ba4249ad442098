"""The HTTP service (``matcher serve``, optional extra ``serve``): recommendations, photos, embeddings."""
