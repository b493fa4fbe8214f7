"""Image search over a trained model: `python -m hashjax.serve --workdir=RUN`.

`service.SearchService` (the database, searches and adds, no web framework), `store` (the
append-only store of added images), `encoder` (batched encoding), `uploads` (decoding
uploaded images), `app` (the FastAPI app and page; needs the `serve` extra).
"""
